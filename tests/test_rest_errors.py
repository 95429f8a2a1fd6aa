"""Every REST error: its Twilio code, HTTP status and body shape; authentication on every route;
the request body limit; and a fuzz-ish pass of odd inputs that must never produce a 500.

Some inputs cannot be sent through httpx as they are (it re-encodes a bad ``%`` in a path), so
those requests are built as raw ASGI calls on an app of this module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from starlette.applications import Starlette

from sync_server.app import create_app
from sync_server.config import Settings
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
)
from tests.support.rest import documents, expect_error

ERROR_KEYS = {"code", "message", "more_info", "status"}
MAX_DATA = 16 * 1024
BODY_LIMIT = 128 * 1024  # Limits.max_body_bytes, the default the test settings keep
UNKNOWN_DOCUMENT = "ET" + "0" * 32


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


AUTH_HEADER = basic(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)


# -- raw ASGI calls ----------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    body_bytes_read: int = 0


@dataclass
class RawBody:
    """A request body handed to the app in chunks, counting how much of it the app asked for."""

    chunks: list[bytes]
    read: int = 0
    sent: list[int] = field(default_factory=list)


async def call(
    app: Starlette,
    method: str,
    raw_path: bytes,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: RawBody | None = None,
    query: bytes = b"",
    auth: bool = True,
) -> RawResponse:
    body = body or RawBody([])
    all_headers = list(headers or [])
    if auth:
        all_headers.append((b"authorization", AUTH_HEADER.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver"), *all_headers],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 12345),
    }
    started: dict[str, Any] = {}
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if body.read < len(body.chunks):
            chunk = body.chunks[body.read]
            body.read += 1
            body.sent.append(len(chunk))
            return {"type": "http.request", "body": chunk, "more_body": body.read < len(body.chunks)}
        if body.read == len(body.chunks) and not body.chunks:
            body.read += 1
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the app must not wait for a disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return RawResponse(
        status=started["status"],
        headers=dict(started.get("headers", [])),
        body=b"".join(parts),
        body_bytes_read=sum(body.sent),
    )


def assert_twilio_shaped(status: int, body: bytes, context: object) -> None:
    assert status < 500, (status, body, context)
    if status >= 400:
        parsed = json.loads(body)
        assert set(parsed) == ERROR_KEYS, (parsed, context)
        assert parsed["status"] == status, (parsed, context)
        assert isinstance(parsed["code"], int), (parsed, context)
    elif body:
        json.loads(body)


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    yield application
    await application.state.store.close()


# -- authentication ------------------------------------------------------------------------------------


ROUTES = [
    ("GET", "/v1/Services"),
    ("POST", "/v1/Services"),
    ("GET", "/v1/Services/{service}"),
    ("POST", "/v1/Services/{service}"),
    ("DELETE", "/v1/Services/{service}"),
    ("GET", "/v1/Services/{service}/Documents"),
    ("POST", "/v1/Services/{service}/Documents"),
    ("GET", "/v1/Services/{service}/Documents/{document}"),
    ("POST", "/v1/Services/{service}/Documents/{document}"),
    ("DELETE", "/v1/Services/{service}/Documents/{document}"),
    ("GET", "/v1/Services/{service}/Documents/{document}/Permissions"),
    ("GET", "/v1/Services/{service}/Documents/{document}/Permissions/alice"),
    ("POST", "/v1/Services/{service}/Documents/{document}/Permissions/alice"),
    ("DELETE", "/v1/Services/{service}/Documents/{document}/Permissions/alice"),
    # Unknown things must look exactly the same without credentials: no information leak.
    ("GET", "/v1/Services/{service}/Documents/" + UNKNOWN_DOCUMENT),
    ("GET", "/v1/Services/IS" + "0" * 32),
    ("GET", "/v1/Services/IS" + "0" * 32 + "/Documents/x"),
    ("GET", "/v1/Nothing/Here"),
    ("GET", "/v1/"),
    ("PUT", "/v1/Services"),
]


@pytest.mark.parametrize(("method", "template"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic(TEST_ACCOUNT_SID, "wrong-token"),
        basic("AC" + "f" * 32, TEST_AUTH_TOKEN),
        basic(TEST_API_KEY_SID, TEST_AUTH_TOKEN),  # a key SID with the account's token
        basic(TEST_ACCOUNT_SID, TEST_API_KEY_SECRET),
        basic(TEST_ACCOUNT_SID, ""),
        "Basic",
        "Basic !!!",
        "Bearer " + TEST_AUTH_TOKEN,
        AUTH_HEADER + "x",
    ],
    ids=lambda a: "none" if a is None else a[:12],
)
async def test_every_route_needs_credentials(
    client: httpx.AsyncClient, service: str, method: str, template: str, authorization: str | None
) -> None:
    document = (await client.post(documents(service), data={"UniqueName": "secret"})).json()["sid"]
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.request(
        method, template.format(service=service, document=document), headers=headers, auth=None
    )
    body = expect_error(response, 401, 20003)
    assert body["message"] == "Authenticate"
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    # Nothing was written.
    assert (await client.get(f"{documents(service)}/secret")).json()["revision"] == "0"


@pytest.mark.parametrize(
    "auth",
    [
        (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN),
        (TEST_API_KEY_SID, TEST_API_KEY_SECRET),
    ],
)
async def test_accepted_credentials(client: httpx.AsyncClient, auth: tuple[str, str]) -> None:
    assert (await client.get("/v1/Services", auth=auth)).status_code == 200


async def test_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    header = "basic " + base64.b64encode(f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}".encode()).decode()
    assert (await client.get("/v1/Services", headers={"Authorization": header}, auth=None)).status_code == 200


async def test_healthz_needs_no_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", auth=None)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- not found and methods ------------------------------------------------------------------------------


async def test_unknown_document(client: httpx.AsyncClient, service: str) -> None:
    for ident in (UNKNOWN_DOCUMENT, "no-such-name"):
        # 20404 rather than 54100 on REST (the reference marks this UNVERIFIED).
        expect_error(await client.get(f"{documents(service)}/{ident}"), 404, 20404)
        expect_error(await client.post(f"{documents(service)}/{ident}", data={"Data": "{}"}), 404, 20404)
        expect_error(await client.delete(f"{documents(service)}/{ident}"), 404, 20404)
        expect_error(await client.get(f"{documents(service)}/{ident}/Permissions"), 404, 20404)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/Nothing",
        "/v1/",
        "/v1/Services/{service}/Lists",
        "/v1/Services/{service}/Maps/x",
        "/v1/Services/{service}/documents",
        "/v1/services",
        "/v2/Services",
        "/nothing",
    ],
)
async def test_unknown_route(client: httpx.AsyncClient, service: str, path: str) -> None:
    expect_error(await client.get(path.format(service=service)), 404, 20404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/Services"),
        ("DELETE", "/v1/Services"),
        ("PATCH", "/v1/Services/{service}"),
        ("PUT", "/v1/Services/{service}/Documents/x"),
        ("DELETE", "/v1/Services/{service}/Documents"),
        ("POST", "/v1/Services/{service}/Documents/x/Permissions"),
        ("HEAD", "/v1/Services"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method(client: httpx.AsyncClient, service: str, method: str, path: str) -> None:
    response = await client.request(method, path.format(service=service))
    assert response.status_code == 405
    if method != "HEAD":
        expect_error(response, 405, 20004)


# -- input validation --------------------------------------------------------------------------------


async def test_duplicate_unique_name(client: httpx.AsyncClient, service: str) -> None:
    first = (await client.post(documents(service), data={"UniqueName": "taken", "Data": '{"a":1}'})).json()
    expect_error(await client.post(documents(service), data={"UniqueName": "taken"}), 409, 54301)
    assert (await client.get(f"{documents(service)}/taken")).json() == first
    # Names are per service.
    other = (await client.post("/v1/Services")).json()["sid"]
    assert (await client.post(documents(other), data={"UniqueName": "taken"})).status_code == 201


@pytest.mark.parametrize(
    "name", ["", "x" * 321, "ET" + "0123456789abcdef" * 2, "IS" + "f" * 32, "ZZ" + "a" * 32]
)
async def test_invalid_unique_name(client: httpx.AsyncClient, service: str, name: str) -> None:
    expect_error(await client.post(documents(service), data={"UniqueName": name}), 400, 54302)
    assert (await client.get(documents(service))).json()["documents"] == []


def data_of_size(size: int, char: str = "x") -> str:
    """A JSON object whose compact UTF-8 form is exactly ``size`` bytes."""
    room = size - len('{"k":""}')
    count, pad = divmod(room, len(char.encode()))
    text = json.dumps({"k": char * count + "x" * pad}, ensure_ascii=False)
    assert len(text.replace(", ", ",").replace(": ", ":").encode()) == size
    return text


@pytest.mark.parametrize("char", ["x", "é", "✓", "𝄞"])
async def test_data_size_limit(client: httpx.AsyncClient, service: str, char: str) -> None:
    exact = data_of_size(MAX_DATA, char)
    created = await client.post(documents(service), data={"Data": exact})
    assert created.status_code == 201, created.text
    url = f"{documents(service)}/{created.json()['sid']}"
    over = data_of_size(MAX_DATA + 1, char)
    expect_error(await client.post(documents(service), data={"Data": over}), 413, 54006)
    expect_error(await client.post(url, data={"Data": over}), 413, 54006)
    assert (await client.get(url)).json()["revision"] == "0"


async def test_size_is_measured_on_compact_json(client: httpx.AsyncClient, service: str) -> None:
    spaced = json.dumps(json.loads(data_of_size(MAX_DATA)), indent=8).replace('"k"', ' "k" ')
    assert len(spaced.encode()) > MAX_DATA
    assert (await client.post(documents(service), data={"Data": spaced})).status_code == 201
    # Escapes count as the characters they stand for: "\u00e9" is two bytes of UTF-8, not six.
    escaped = json.dumps(json.loads(data_of_size(MAX_DATA, "é")), ensure_ascii=True)
    assert (await client.post(documents(service), data={"Data": escaped})).status_code == 201


@pytest.mark.parametrize(
    "data",
    [
        "",
        " ",
        "{",
        '{"a":}',
        "{'a': 1}",
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": 1e400}',
        '{"a": -1e400, "b": 123456789012345678901234567890}',
        '{"a": "\\ud800"}',
        '{"b": 123456789012345678901234567890, "a": "\\udfff"}',
        '{"a": 1} x',
        '{"a": 01}',
        "{" * 5000 + "}" * 5000,
        "[" * 10_000,
        '{"n": ' + "9" * 5000 + "}",
    ],
)
async def test_invalid_json(client: httpx.AsyncClient, service: str, data: str) -> None:
    expect_error(await client.post(documents(service), data={"Data": data}), 400, 54008)
    doc = (await client.post(documents(service))).json()
    expect_error(await client.post(f"{documents(service)}/{doc['sid']}", data={"Data": data}), 400, 54008)


@pytest.mark.parametrize("data", ["[]", "[1]", "null", '"text"', "42", "1.5", "true"])
async def test_data_not_an_object(client: httpx.AsyncClient, service: str, data: str) -> None:
    expect_error(await client.post(documents(service), data={"Data": data}), 400, 54101)
    doc = (await client.post(documents(service))).json()
    expect_error(await client.post(f"{documents(service)}/{doc['sid']}", data={"Data": data}), 400, 54101)


@pytest.mark.parametrize("ttl", ["-1", "31536001", "abc", "1.5", "", "1e3", "٣", "0x10", "9" * 5000])
async def test_invalid_ttl(client: httpx.AsyncClient, service: str, ttl: str) -> None:
    # Validation comes before any write: the valid name and data are not stored either.
    response = await client.post(documents(service), data={"UniqueName": "n", "Data": "{}", "Ttl": ttl})
    expect_error(response, 400, 54011)
    assert (await client.get(documents(service))).json()["documents"] == []
    doc = (await client.post(documents(service), data={"Data": '{"a":1}'})).json()
    url = f"{documents(service)}/{doc['sid']}"
    expect_error(await client.post(url, data={"Data": '{"b":2}', "Ttl": ttl}), 400, 54011)
    assert (await client.get(url)).json() == doc


async def test_page_errors(client: httpx.AsyncClient, service: str) -> None:
    expect_error(await client.get(documents(service), params={"PageToken": "nope"}), 400, 54453)
    expect_error(await client.get(documents(service), params={"PageSize": "0"}), 400, 54454)


# -- the request body limit ------------------------------------------------------------------------------


async def test_oversized_body_refused(client: httpx.AsyncClient, service: str) -> None:
    body = urlencode({"Data": json.dumps({"k": "x" * (1 << 20)})})
    response = await client.post(
        documents(service), content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    expect_error(response, 413, 54006)
    assert (await client.get(documents(service))).json()["documents"] == []


async def test_declared_oversized_body_is_not_read(app: Starlette, service: str) -> None:
    chunks = [b"x" * 65536] * 16  # 1 MiB
    body = RawBody(chunks)
    headers = [(b"content-length", str(1 << 20).encode())]
    response = await call(
        app, "POST", f"/v1/Services/{service}/Documents".encode(), headers=headers, body=body
    )
    assert response.status == 413
    assert json.loads(response.body)["code"] == 54006
    assert response.body_bytes_read == 0


async def test_chunked_oversized_body_stops_at_the_limit(app: Starlette, service: str) -> None:
    # No Content-Length: the app reads until it is past the limit, and not one chunk further.
    chunks = [b"x" * 65536] * 16
    body = RawBody(chunks)
    response = await call(app, "POST", f"/v1/Services/{service}/Documents".encode(), body=body)
    assert response.status == 413
    assert BODY_LIMIT < response.body_bytes_read <= BODY_LIMIT + 65536


async def test_real_server_answers_413_before_the_body_is_sent(server: ServerProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /v1/Services/IS00000000000000000000000000000000/Documents HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Authorization: " + AUTH_HEADER.encode() + b"\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1048576\r\n\r\n"
        )
        await writer.drain()
        # Not a byte of the body was sent, and the answer comes anyway.
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line


# -- never a 500 ------------------------------------------------------------------------------------------


def random_text(rng: random.Random, length: int) -> str:
    pools = [
        "abcXYZ019 ",
        '{}[]":,.-+eE0123456789tfnul\\ ',
        "%/?#&=+;@!$'()*,~",
        "\t\n\r\x00\x1f\x7f",
        "éü✓日本𝄞\u2028\ufeff\ufffd",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(length))


def random_bytes(rng: random.Random, length: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(length))


BAD_ESCAPES = [b"%", b"%z", b"%zz", b"%f", b"%ff", b"%C3", b"%E2%82", b"%ED%A0%80", b"%00", b"%2F", b"%25"]


def random_segment(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return quote(random_bytes(rng, rng.randrange(1, 12)), safe="").encode()
    if kind == 1:
        return rng.choice(BAD_ESCAPES) + quote(random_text(rng, 3), safe="").encode()
    if kind == 2:
        return bytes(rng.choice(b"abc.-_~!$&'()*+,;=:@%") for _ in range(rng.randrange(1, 8)))
    return random_bytes(rng, rng.randrange(1, 6)).replace(b"/", b"").replace(b"?", b"") or b"x"


def random_form(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return random_bytes(rng, rng.randrange(0, 40))  # not UTF-8, not a form
    fields: dict[str, str | bytes] = {}
    for name in rng.sample(
        [
            "Data",
            "UniqueName",
            "Ttl",
            "FriendlyName",
            "WebhookUrl",
            "AclEnabled",
            "ReachabilityDebouncingWindow",
            "Read",
            "Write",
            "Manage",
        ],
        rng.randrange(1, 4),
    ):
        fields[name] = (
            random_bytes(rng, rng.randrange(0, 20)) if kind == 1 else random_text(rng, rng.randrange(0, 30))
        )
    if kind == 3:
        fields["Data"] = json.dumps(
            {random_text(rng, 3): random_text(rng, 5)}, ensure_ascii=rng.random() < 0.5
        )
    if kind == 4:
        fields["WebhookUrl"] = rng.choice(["http://[::1", "http://[", "https://", "//x", "http://a b"])
    return urlencode(fields).encode()


async def test_odd_inputs_never_500(app: Starlette, client: httpx.AsyncClient, service: str) -> None:
    rng = random.Random(20240611)
    doc = (await client.post(documents(service), data={"UniqueName": "fuzz"})).json()["sid"]
    prefixes = [
        b"/v1/Services",
        f"/v1/Services/{service}".encode(),
        f"/v1/Services/{service}/Documents".encode(),
        f"/v1/Services/{service}/Documents/{doc}".encode(),
        f"/v1/Services/{service}/Documents/fuzz/Permissions".encode(),
    ]
    methods = ["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS"]
    for i in range(600):
        path = rng.choice(prefixes)
        for _ in range(rng.randrange(0, 3)):
            path += b"/" + random_segment(rng)
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/x-www-form-urlencoded")]
        if rng.random() < 0.4:
            headers.append((b"if-match", bytes(rng.randrange(32, 256) for _ in range(rng.randrange(0, 20)))))
        query = b""
        if rng.random() < 0.3:
            query = urlencode({"PageSize": random_text(rng, 3), "PageToken": random_text(rng, 6)}).encode()
        if rng.random() < 0.1:
            query = random_bytes(rng, 10)
        body = random_form(rng)
        method = rng.choice(methods)
        if path == prefixes[1] and method == "DELETE":
            method = "GET"  # keep the service: everything after would only be a 54050
        response = await call(app, method, path, headers=headers, body=RawBody([body]), query=query)
        context = (i, method, path, query, body)
        assert_twilio_shaped(response.status, response.body, context)
    # Whatever the fuzz did, the API still works.
    assert (await client.get(documents(service))).status_code == 200


async def test_odd_inputs_through_httpx_never_500(client: httpx.AsyncClient, service: str) -> None:
    rng = random.Random(99)
    for _ in range(200):
        name = random_text(rng, rng.randrange(1, 40))
        data = random_text(rng, rng.randrange(0, 40))
        form = {"UniqueName": name, "Data": data if rng.random() < 0.5 else json.dumps({"v": data})}
        if rng.random() < 0.3:
            form["Ttl"] = random_text(rng, 4)
        created = await client.post(documents(service), data=form)
        assert_twilio_shaped(created.status_code, created.content, form)
        target = quote(name, safe="") if created.status_code == 201 else quote(random_text(rng, 5), safe="")
        headers = {"If-Match": random_text(rng, 4).encode()}
        for response in (
            await client.get(f"{documents(service)}/{target}"),
            await client.post(f"{documents(service)}/{target}", data={"Data": data}, headers=headers),
            await client.delete(f"{documents(service)}/{target}"),
        ):
            assert_twilio_shaped(response.status_code, response.content, (name, data))
