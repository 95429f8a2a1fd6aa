"""Every HTTP response of the app carries ``Twilio-Request-Id: RQ<32 hex>``, new per request: REST
answers of every kind (200/201/204, 4xx, 503 on a dead Redis, 500 on a bug), the operator endpoints,
static files, 404s and Host refusals outside ``/v1``. A bug's log record names the id of its 500,
and so does any record logged while the request is handled. The formatters: one JSON object per line
with the documented fields; text lines name the id; both redact secrets. Driven in-process on the
session's real Redis (real server processes in test_server_logs.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import replace

import httpx
import pytest
from starlette.responses import Response

from sync_server import logs
from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.rest import api, openapi
from sync_server.rest.handlers import Context
from tests.support.processes import free_port
from tests.support.rest import documents, expect_error

REQUEST_ID = re.compile(r"RQ[0-9a-f]{32}")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def request_id(response: httpx.Response) -> str:
    value = response.headers["Twilio-Request-Id"]
    assert REQUEST_ID.fullmatch(value), value
    assert response.headers.get_list("Twilio-Request-Id") == [value]
    return value


async def test_every_rest_answer_carries_a_new_request_id(client: httpx.AsyncClient, service: str) -> None:
    base = documents(service)
    answers = [
        (await client.post(base, data={"UniqueName": "ids", "Data": "{}"}), 201),
        (await client.get(f"{base}/ids"), 200),
        (await client.get(f"{base}/ids"), 200),
        (await client.post(f"{base}/ids", data={"Data": "{}"}, headers={"If-Match": "7"}), 412),
        (await client.get(f"{base}/missing"), 404),
        (await client.get("/v1/Services", auth=None), 401),
        (await client.put(f"{base}/ids"), 405),
        (await client.get("/v1/Nothing/here"), 404),
        (await client.get(base, params={"PageSize": "0"}), 400),
        (await client.delete(f"{base}/ids"), 204),
    ]
    assert [response.status_code for response, _ in answers] == [status for _, status in answers]
    ids = [request_id(response) for response, _ in answers]
    assert len(set(ids)) == len(ids)


async def test_operator_endpoints_static_files_and_other_paths_carry_one(client: httpx.AsyncClient) -> None:
    answers = [
        (await client.get("/healthz", auth=None), 200),
        (await client.get("/openapi.json", auth=None), 200),
        (await client.get("/sdk/sync.js", auth=None), 200),
        (await client.get("/demo", auth=None), 200),
        (await client.get("/nowhere", auth=None), 404),
        (await client.post("/healthz", auth=None), 405),
        (await client.get("/ws", auth=None), 404),
    ]
    assert [response.status_code for response, _ in answers] == [status for _, status in answers]
    ids = [request_id(response) for response, _ in answers]
    assert len(set(ids)) == len(ids)


async def test_a_refused_host_is_answered_with_a_request_id(settings: Settings) -> None:
    app = create_app(replace(settings, allowed_hosts=("sync.example.com",)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://evil.test") as http:
        for path in ("/v1/Services", "/openapi.json"):
            response = await http.get(path)
            expect_error(response, 400, 20001)
            request_id(response)
        # A load balancer's probe may use any Host.
        health = await http.get("/healthz")
        assert health.status_code == 200
        request_id(health)
    await app.state.store.close()


async def test_answers_without_redis_carry_one(settings: Settings) -> None:
    app = create_app(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    transport = httpx.ASGITransport(app=app)
    auth = (settings.account_sid, settings.auth_token)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", auth=auth) as http:
        write = await http.post("/v1/Services/default/Documents", data={"Data": "{}"})
        expect_error(write, 503, 20503)
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert request_id(write) != request_id(health)
    await app.state.store.close()


async def test_a_bug_is_logged_with_the_id_of_its_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(context: Context) -> Response:
        logging.getLogger("sync_server.store").warning("about to fail")
        raise RuntimeError("a bug")

    monkeypatch.setitem(api.ROUTES[("Services",)], "GET", broken)
    with caplog.at_level(logging.INFO, logger="sync_server"):
        response = await client.get("/v1/Services")
    expect_error(response, 500, 20500)
    rid = request_id(response)
    [warning] = [r for r in caplog.records if r.name == "sync_server.store"]
    [error] = [r for r in caplog.records if r.name == "sync_server.rest.api"]
    [access] = [r for r in caplog.records if r.name == "sync_server.access"]
    assert error.getMessage() == f"unhandled error on GET /v1/Services ({rid})"
    # Records carry the id without being passed it (the request's context), in either format.
    for record in (warning, error):
        line = json.loads(logs.JsonFormatter().format(record))
        assert line["request_id"] == rid
        assert rid in logs.TextFormatter("%(levelprefix)s %(message)s", use_colors=False).format(record)
    logged = json.loads(logs.JsonFormatter().format(error))
    assert "RuntimeError: a bug" in logged["exc_info"]
    entry = json.loads(logs.JsonFormatter().format(access))
    assert {k: entry[k] for k in ("request_id", "method", "route", "status", "identity")} == {
        "request_id": rid,
        "method": "GET",
        "route": "/v1/Services",
        "status": 500,
        "identity": "system",
    }


async def test_access_lines_name_the_route_template_never_the_path(
    client: httpx.AsyncClient, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = "private-name-of-alice"
    with caplog.at_level(logging.INFO, logger="sync_server.access"):
        created = await client.post(documents(service), data={"UniqueName": name, "Data": "{}"})
        fetched = await client.get(f"{documents(service)}/{name}/Permissions/alice", auth=None)
        missing = await client.get(f"/v1/Services/{service}/Nope/{name}")
    assert (created.status_code, fetched.status_code, missing.status_code) == (201, 401, 404)
    entries = [json.loads(logs.JsonFormatter().format(r)) for r in caplog.records]
    summary = [(e["request_id"], e.get("route"), e["status"]) for e in entries]
    assert summary == [
        (request_id(created), "/v1/Services/{ServiceSid}/Documents", 201),
        # Refused before routing, still named by its route; no identity without credentials.
        (request_id(fetched), api.TEMPLATES[("Services", None, "Documents", None, "Permissions", None)], 401),
        (request_id(missing), None, 404),
    ]
    assert [e.get("identity") for e in entries] == ["system", None, "system"]
    assert all(e["duration_ms"] >= 0 and e["method"] in ("GET", "POST") for e in entries)
    assert not any(name in line or service in line for line in caplog.text.splitlines())


def test_route_templates_are_the_described_paths() -> None:
    assert set(api.TEMPLATES) == set(api.ROUTES)
    described = {path for path in openapi.build(1024)["paths"] if path.startswith("/v1/")}
    assert set(api.TEMPLATES.values()) == described


def test_the_description_declares_the_header_on_app_answers() -> None:
    spec = openapi.build(1024)
    header = spec["components"]["headers"]["Twilio-Request-Id"]
    assert header["schema"]["pattern"] == "^RQ[0-9a-f]{32}$"
    ref = {"$ref": "#/components/headers/Twilio-Request-Id"}
    shared = spec["components"]["responses"]
    for name, response in shared.items():
        # 414 and 431 are answered by the HTTP protocol before the app sees the request.
        expected = None if name in ("RequestTargetTooLarge", "RequestHeadTooLarge") else ref
        assert response.get("headers", {}).get("Twilio-Request-Id") == expected, name
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if "$ref" not in response:
                    assert response["headers"]["Twilio-Request-Id"] == ref, (path, method, status)


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("failed on /ws?token=s3cret")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("sync_server.gateway", logging.ERROR, __file__, 1, message, args, exc_info)


def test_json_lines_have_the_documented_fields_and_no_secret() -> None:
    record = _record("closed %s\nafter a newline", "/ws?token=s3cret&service=x", exc=True)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line and "s3cret" not in line
    entry = json.loads(line)
    assert ISO_UTC.fullmatch(entry["time"]), entry["time"]
    assert (entry["level"], entry["logger"]) == ("ERROR", "sync_server.gateway")
    assert entry["message"] == "closed /ws?token=<redacted>&service=x\nafter a newline"
    assert entry["exc_info"].startswith("Traceback") and "token=<redacted>" in entry["exc_info"]
    assert "request_id" not in entry


def test_text_lines_keep_uvicorns_shape_and_no_secret() -> None:
    formatter = logs.TextFormatter("%(levelprefix)s %(message)s", use_colors=False)
    text = formatter.format(_record("closed %s", "/ws?token=s3cret", exc=True))
    assert text.startswith("ERROR:    closed /ws?token=<redacted>\nTraceback")
    assert "s3cret" not in text
    assert REQUEST_ID.fullmatch(logs.new_request_id())


def test_log_config_covers_every_logger_at_the_level() -> None:
    for log_format, formatter in (("json", "JsonFormatter"), ("text", "TextFormatter")):
        config = logs.log_config(log_format, "debug")
        assert {f["()"] for f in config["formatters"].values()} == {f"sync_server.logs.{formatter}"}
        levels = {name: logger.get("level") for name, logger in config["loggers"].items()}
        assert levels == {
            "uvicorn": 10,
            "uvicorn.error": 10,
            "uvicorn.access": 10,
            "sync_server": 10,
            "sync_server.access": 10,
        }
        assert config["root"] == {"handlers": ["default"], "level": "WARNING"}
    assert logs.log_config("text", "trace")["loggers"]["sync_server"]["level"] == 5
