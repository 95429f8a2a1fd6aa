"""``/openapi.json`` is valid OpenAPI 3.1 and true of the real server.

A session drives the app in-process (real Redis) through every route and method, success and error
cases, and validates every response with openapi-core's response validator (and the request too,
whenever the server accepted it: a request the server serves must be one the description allows).
Each operation must then have been seen answering every status the description declares for it,
except those only a fault can produce (503 has its own test on a dead Redis, 414/431 on a real
server process; 500 is a bug). Another test checks that the description's paths and methods are
exactly the router's, so the two cannot drift.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from starlette.routing import Route
from werkzeug.datastructures import Headers, ImmutableMultiDict

from sync_server.app import create_app
from sync_server.config import Limits, Settings
from sync_server.rest.api import ROUTES
from sync_server.validation import MAX_DATA_BYTES
from tests.support.processes import ServerProcess, free_port

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Only a fault produces these; they are validated in their own tests below (500 is a bug).
FAULT_STATUSES = {"414", "431", "500", "503"}
# Plain HTTP routes that are pages for people, not API: every other route must be described.
BROWSER_PAGES = {"/demo"}
UNKNOWN_SERVICE = "IS" + "0" * 32
UNKNOWN_DOCUMENT = "ET" + "0" * 32


# -- httpx -> openapi-core ----------------------------------------------------------------------------


@dataclass
class OpenApiRequest:
    """openapi-core's Request protocol, for a request httpx sent."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters

    @classmethod
    def of(cls, request: httpx.Request) -> OpenApiRequest:
        url = request.url
        # The raw path: a unique name with an encoded "/" stays one path parameter, as on the router.
        raw_path = url.raw_path.split(b"?", 1)[0].decode("ascii")
        return cls(
            host_url=f"{url.scheme}://{url.netloc.decode('ascii')}",
            path=raw_path,
            method=request.method.lower(),
            body=request.content or None,
            content_type=request.headers.get("content-type", ""),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qsl(url.query.decode(), keep_blank_values=True)),
                header=Headers(list(request.headers.multi_items())),
                cookie=ImmutableMultiDict(),
            ),
        )


@dataclass
class OpenApiResponse:
    """openapi-core's Response protocol."""

    status_code: int
    content_type: str
    headers: Headers
    data: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> OpenApiResponse:
        return cls.raw(response.status_code, list(response.headers.multi_items()), response.content)

    @classmethod
    def raw(cls, status: int, headers: list[tuple[str, str]], body: bytes) -> OpenApiResponse:
        wrapped = Headers(headers)
        return cls(status, wrapped.get("content-type", ""), wrapped, body)


def template_of(spec: dict[str, Any], raw_path: str) -> str:
    """The description's path template that ``raw_path`` matches (exactly one must)."""
    matches = [
        template
        for template in spec["paths"]
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), raw_path)
    ]
    assert len(matches) == 1, (raw_path, matches)
    template: str = matches[0]
    return template


def validate_as_component(spec: dict[str, Any], name: str, response: OpenApiResponse) -> None:
    """Validates a response that belongs to no described operation (an undescribed path or method)
    against ``components.responses[name]``."""
    described = spec["components"]["responses"][name]
    schema = {**spec, "$ref": f"#/components/responses/{name}/content/application~1json/schema"}
    OAS31Validator(schema).validate(json.loads(response.data))
    assert response.content_type == "application/json"
    for header in described.get("headers", {}):
        assert header in response.headers, (name, header)


# -- the session ---------------------------------------------------------------------------------------


@dataclass
class Session:
    http: httpx.AsyncClient
    spec: dict[str, Any]
    api: OpenAPI
    seen: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(template, method) -> the statuses each described operation was seen answering."""

    async def call(
        self, method: str, url: str, status: int, code: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Sends one request, asserts its status (and Twilio code), and validates the response
        against the description."""
        response = await self.http.request(method, url, **kwargs)
        assert response.status_code == status, (method, url, response.status_code, response.text)
        if code is not None:
            body = response.json()
            assert (body["code"], body["status"]) == (code, status), body
        request = OpenApiRequest.of(response.request)
        self.api.validate_response(request, OpenApiResponse.of(response))
        if response.is_success:
            self.api.validate_request(request)
        key = (template_of(self.spec, request.path), request.method)
        self.seen.setdefault(key, set()).add(str(status))
        return response

    async def undescribed(
        self, method: str, url: str, status: int, component: str, **kwargs: Any
    ) -> httpx.Response:
        """A request no operation describes (a wrong method, an unknown path): its answer must be
        the named component response, and openapi-core must agree that no path (404) or no
        operation of the path (405) covers it."""
        response = await self.http.request(method, url, **kwargs)
        assert response.status_code == status, (method, url, response.text)
        request = OpenApiRequest.of(response.request)
        with pytest.raises(PathNotFound if status == 404 else OperationNotFound):
            self.api.validate_response(request, OpenApiResponse.of(response))
        validate_as_component(self.spec, component, OpenApiResponse.of(response))
        return response


@pytest.fixture(scope="module")
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json", auth=None)
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


@pytest.fixture
async def session(client: httpx.AsyncClient, spec: dict[str, Any]) -> AsyncIterator[Session]:
    yield Session(client, spec, OpenAPI.from_dict(spec))


def test_the_description_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate_spec(spec, cls=OpenAPIV31SpecValidator)
    assert spec["servers"] == [{"url": "/", "description": "This server."}]
    scheme = spec["components"]["securitySchemes"]["accountSid_authToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "basic")
    # Every /v1 operation inherits the Basic requirement; the operator endpoints opt out of it.
    assert spec["security"] == [{"accountSid_authToken": []}]
    for path, item in spec["paths"].items():
        for method in set(item) & set(METHODS):
            assert ("security" in item[method]) == (not path.startswith("/v1/")), (path, method)


async def test_openapi_json_is_served_without_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json", auth=None)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert re.fullmatch(r"3\.1\.\d+", body["openapi"])
    assert "/v1/Services/{ServiceSid}/Documents/{Sid}" in body["paths"]
    # The served description states this server's configured body limit.
    limit = Limits().max_body_bytes
    assert str(limit) in body["components"]["responses"]["BodyTooLarge"]["description"]
    head = await client.head("/openapi.json", auth=None)
    assert (head.status_code, head.content) == (200, b"")


async def test_the_description_has_exactly_the_routes_the_server_serves(
    spec: dict[str, Any], settings: Settings
) -> None:
    described: set[tuple[tuple[str | None, ...], str]] = set()
    public: set[tuple[str, str]] = set()
    for path, item in spec["paths"].items():
        for method in set(item) & set(METHODS):
            if path.startswith("/v1/"):
                segments = path.removeprefix("/v1/").split("/")
                pattern = tuple(None if s.startswith("{") else s for s in segments)
                described.add((pattern, method.upper()))
            else:
                public.add((path, method.upper()))
    routed = {(pattern, method) for pattern, methods in ROUTES.items() for method in methods}
    assert described == routed
    assert public == {("/healthz", "GET"), ("/openapi.json", "GET"), ("/metrics", "GET")}
    # ...and those are the app's own plain HTTP routes (HEAD comes with GET).
    app = create_app(settings)
    await app.state.store.close()
    served = {
        (route.path, method)
        for route in app.starlette.routes
        if isinstance(route, Route)
        for method in route.methods or ()
    }
    assert {(p, m) for p, m in served if p not in BROWSER_PAGES} == public | {
        ("/healthz", "HEAD"),
        ("/openapi.json", "HEAD"),
        ("/metrics", "HEAD"),
    }


async def test_a_session_through_every_route_validates(session: Session, settings: Settings) -> None:
    s = session
    await s.call("GET", "/openapi.json", 200, auth=None)
    await s.call("GET", "/healthz", 200, auth=None)
    # /metrics: public on loopback (this app's setting), and on an app that requires credentials
    # (SYNC_METRICS_AUTH=always, or auto beyond loopback) 401 without them.
    await s.call("GET", "/metrics", 200, auth=None)
    guarded = create_app(replace(settings, metrics_auth="always"))
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        guarded_session = Session(http, s.spec, s.api, s.seen)
        await guarded_session.call("GET", "/metrics", 401, 20003)
        await guarded_session.call("GET", "/metrics", 200, auth=s.http.auth)
    await guarded.state.store.close()

    # -- services
    created = await s.call(
        "POST",
        "/v1/Services",
        201,
        data={
            "FriendlyName": "openapi",
            "AclEnabled": "true",
            "WebhookUrl": "https://example.com/hook",
            "ReachabilityDebouncingEnabled": "True",
            "ReachabilityDebouncingWindow": "2000",
            "WebhooksFromRestEnabled": "false",
            "ReachabilityWebhooksEnabled": "false",
        },
    )
    svc = created.json()["sid"]
    other = (await s.call("POST", "/v1/Services", 201)).json()["sid"]
    await s.call("POST", "/v1/Services", 400, 20001, data={"ReachabilityDebouncingWindow": "10"})
    await s.call("POST", "/v1/Services", 400, 20001, data={"WebhookUrl": "ftp://example.com"})
    first = await s.call("GET", "/v1/Services", 200, params={"PageSize": "1"})
    assert first.json()["meta"]["next_page_url"] is not None
    second = await s.call("GET", first.json()["meta"]["next_page_url"], 200)
    assert second.json()["meta"]["previous_page_url"] is not None
    await s.call("GET", second.json()["meta"]["previous_page_url"], 200)
    await s.call("GET", "/v1/Services", 400, 54454, params={"PageSize": "0"})
    await s.call("GET", "/v1/Services", 400, 54453, params={"PageToken": "nope"})
    await s.call("GET", "/v1/Services", 400, 20001, params={"Page": "-1"})
    await s.call("GET", f"/v1/Services/{svc}", 200)
    await s.call("GET", "/v1/Services/default", 200)
    await s.call("GET", f"/v1/Services/{UNKNOWN_SERVICE}", 404, 54050)
    await s.call("POST", f"/v1/Services/{svc}", 200, data={"FriendlyName": "renamed", "WebhookUrl": ""})
    await s.call("POST", f"/v1/Services/{svc}", 200)  # nothing to change is no error
    await s.call("POST", f"/v1/Services/{svc}", 400, 20001, data={"AclEnabled": "yes"})
    await s.call("POST", f"/v1/Services/{UNKNOWN_SERVICE}", 404, 54050, data={"FriendlyName": "x"})
    await s.call("DELETE", f"/v1/Services/{UNKNOWN_SERVICE}", 404, 54050)
    response = await s.undescribed("PUT", "/v1/Services", 405, "MethodNotAllowed")
    assert response.headers["allow"] == "GET, POST"

    # -- documents
    base = f"/v1/Services/{svc}/Documents"
    doc = await s.call(
        "POST", base, 201, data={"UniqueName": "prefs", "Data": '{"color": "#ff0"}', "Ttl": "3600"}
    )
    assert doc.headers["etag"] == "0"
    doc_sid = doc.json()["sid"]
    await s.call("POST", base, 201)  # no name, no data: {}
    await s.call("POST", base, 201, data={"UniqueName": "a/b", "Data": "{}"})
    await s.call("GET", f"{base}/a%2Fb", 200)
    await s.call("POST", base, 409, 54301, data={"UniqueName": "prefs"})
    await s.call("POST", base, 400, 54008, data={"Data": "{not json"})
    await s.call("POST", base, 400, 54101, data={"Data": "[1]"})
    await s.call("POST", base, 400, 54011, data={"Ttl": "-1"})
    await s.call("POST", base, 400, 54302, data={"UniqueName": UNKNOWN_DOCUMENT})
    await s.call(
        "POST",
        base,
        400,
        20001,
        content=b"Data=%FF",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    big = json.dumps({"k": "x" * MAX_DATA_BYTES})
    await s.call("POST", base, 413, 54006, data={"Data": big})
    await s.call("POST", f"/v1/Services/{UNKNOWN_SERVICE}/Documents", 404, 54050)
    await s.call("GET", f"{base}/{doc_sid}", 200)
    fetched = await s.call("GET", f"{base}/prefs", 200)
    assert fetched.headers["etag"] == fetched.json()["revision"] == "0"
    await s.call("GET", f"{base}/missing", 404, 20404)
    await s.call("GET", f"/v1/Services/{UNKNOWN_SERVICE}/Documents/prefs", 404, 54050)
    updated = await s.call("POST", f"{base}/prefs", 200, data={"Data": '{"n": 1}'}, headers={"If-Match": "0"})
    assert updated.headers["etag"] == "1"
    await s.call("POST", f"{base}/prefs", 412, 54103, data={"Data": '{"n": 2}'}, headers={"If-Match": '"0"'})
    await s.call("POST", f"{base}/prefs", 400, 54003, data={"Data": "{}"}, headers={"If-Match": "zz"})
    await s.call("POST", f"{base}/prefs", 200, data={"Ttl": "0"})
    await s.call("POST", f"{base}/prefs", 400, 20001)
    await s.call("POST", f"{base}/prefs", 400, 54008, data={"Data": "nope"})
    await s.call("POST", f"{base}/prefs", 413, 54006, data={"Data": big})
    await s.call("POST", f"{base}/missing", 404, 20404, data={"Data": "{}"})
    for n in range(3):
        await s.call("POST", base, 201, data={"Data": json.dumps({"n": n})})
    page = await s.call("GET", base, 200, params={"PageSize": "2"})
    assert page.json()["meta"]["next_page_url"] is not None
    page = await s.call("GET", page.json()["meta"]["next_page_url"], 200)
    await s.call("GET", page.json()["meta"]["previous_page_url"], 200)
    await s.call("GET", base, 400, 54454, params={"PageSize": "1001"})
    await s.call("GET", f"/v1/Services/{UNKNOWN_SERVICE}/Documents", 404, 54050)
    response = await s.undescribed("DELETE", base, 405, "MethodNotAllowed")
    assert response.headers["allow"] == "GET, POST"
    response = await s.undescribed("PUT", f"{base}/prefs", 405, "MethodNotAllowed")
    assert response.headers["allow"] == "GET, POST, DELETE"

    # -- permissions
    perms = f"{base}/prefs/Permissions"
    flags = {"Read": "true", "Write": "false", "Manage": "False"}
    granted = await s.call("POST", f"{perms}/alice", 200, data=flags)
    assert granted.json()["read"] is True
    await s.call("POST", f"{perms}/bob", 200, data={**flags, "Write": "true"})
    await s.call("POST", f"{perms}/bob", 400, 20001, data={"Read": "true", "Write": "true"})
    await s.call("POST", f"{perms}/{'x' * 257}", 400, 54351, data=flags)
    await s.call("POST", f"{base}/missing/Permissions/alice", 404, 20404, data=flags)
    listed = await s.call("GET", perms, 200, params={"PageSize": "1"})
    assert listed.json()["meta"]["next_page_url"] is not None
    await s.call("GET", listed.json()["meta"]["next_page_url"], 200)
    await s.call("GET", perms, 400, 54454, params={"PageSize": "x"})
    await s.call("GET", f"{base}/missing/Permissions", 404, 20404)
    await s.call("GET", f"{perms}/alice", 200)
    await s.call("GET", f"{perms}/carol", 404, 54354)
    await s.call("GET", f"{perms}/{'x' * 257}", 400, 54351)
    await s.call("DELETE", f"{perms}/alice", 204)
    await s.call("DELETE", f"{perms}/alice", 404, 54354)
    await s.call("DELETE", f"{perms}/{'x' * 257}", 400, 54351)
    response = await s.undescribed("POST", perms, 405, "MethodNotAllowed")
    assert response.headers["allow"] == "GET"

    # -- what every operation answers alike: 401 without credentials, 413/415 for bodies it reads
    limit = settings.limits.max_body_bytes
    values = {"{ServiceSid}": svc, "{DocumentSid}": "prefs", "{Identity}": "bob"}
    for template, item in s.spec["paths"].items():
        if not template.startswith("/v1/"):
            continue
        path = template.replace("{Sid}", svc if template == "/v1/Services/{Sid}" else "prefs")
        for name, value in values.items():
            path = path.replace(name, value)
        for method, operation in item.items():
            if method not in METHODS:
                continue
            await s.call(method.upper(), path, 401, 20003, auth=None)
            wrong = await s.call(method.upper(), path, 401, 20003, auth=("AC" + "1" * 32, "wrong"))
            assert wrong.headers["www-authenticate"] == 'Basic realm="Sync API"'
            if "requestBody" in operation:
                await s.call(method.upper(), path, 415, 20001, json={"Data": {}})
                form = {"Content-Type": "application/x-www-form-urlencoded"}
                await s.call(method.upper(), path, 413, 54006, content=b"x" * (limit + 1), headers=form)

    # -- deletes last
    await s.call("DELETE", f"{base}/{doc_sid}", 204)
    await s.call("DELETE", f"{base}/{doc_sid}", 404, 20404)
    await s.call("DELETE", f"/v1/Services/{other}", 204)
    await s.call("DELETE", f"/v1/Services/{svc}", 204)
    await s.call("GET", f"/v1/Services/{svc}", 404, 54050)
    await s.call("GET", f"{base}/prefs/Permissions/bob", 404, 54050)

    # -- paths and methods that nothing describes
    await s.undescribed("GET", "/v1/Nothing", 404, "NotFound")
    await s.undescribed("GET", f"/v1/Services/{svc}/Lists", 404, "NotFound")
    await s.undescribed("GET", "/nothing", 404, "NotFound", auth=None)
    response = await s.undescribed("POST", "/healthz", 405, "MethodNotAllowed", auth=None)
    assert response.headers["allow"] == "GET, HEAD"
    response = await s.undescribed("DELETE", "/openapi.json", 405, "MethodNotAllowed", auth=None)
    assert response.headers["allow"] == "GET, HEAD"

    # Every operation was seen, answering every status it declares (but the fault-only ones).
    for template, item in s.spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                declared = set(operation["responses"]) - FAULT_STATUSES
                assert s.seen.get((template, method), set()) == declared, (template, method)


async def test_answers_without_redis_are_the_described_503s(spec: dict[str, Any], settings: Settings) -> None:
    dead = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(dead)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=(settings.account_sid, settings.auth_token)
    ) as http:
        s = Session(http, spec, OpenAPI.from_dict(spec))
        await s.call("GET", "/healthz", 503, auth=None)
        await s.call("GET", "/v1/Services", 503, 20503)
        await s.call("GET", "/v1/Services/default/Documents/prefs", 503, 20503)
        await s.call("POST", "/v1/Services/default/Documents", 503, 20503, data={"Data": "{}"})
    await app.state.store.close()


def _raw_exchange(server: ServerProcess, request: bytes) -> OpenApiResponse:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    return OpenApiResponse.raw(int(status_line.split(" ")[1]), headers, body)


def test_oversized_request_heads_get_the_described_414_and_431(
    spec: dict[str, Any], server: ServerProcess
) -> None:
    api = OpenAPI.from_dict(spec)
    line = Limits.max_request_line_bytes
    head = Limits.max_header_bytes
    for target, extra, status in (
        (f"/v1/Services?pad={'p' * line}", b"", 414),
        ("/v1/Services", b"X-Big: " + b"a" * head + b"\r\n", 431),
        ("/healthz", b"X-Big: " + b"a" * head + b"\r\n", 431),
    ):
        response = _raw_exchange(
            server, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + extra + b"\r\n"
        )
        assert response.status_code == status
        assert json.loads(response.data)["code"] == 20001
        request = OpenApiRequest.of(httpx.Request("GET", f"{server.base_url}{target}"))
        api.validate_response(request, response)
