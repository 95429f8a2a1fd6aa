"""What a real server process logs, in both ``--log-format``s: one access line per request naming its
request id (read from the ``Twilio-Request-Id`` of each response), route template and status; in
``json`` every line of the output, uvicorn's and the app's, supervisor's and both workers', is one
JSON object. Secrets never appear: not the auth token or the API key secret sent in Basic auth, not
the access token sent in ``?token=`` on ``/ws``, nor a document's unique name (paths are logged as
route templates). A paging cursor, a refused oversized request and a refused token are driven too.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sync_server.cli import build_parser
from sync_server.config import Limits
from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    ServerProcess,
)

DOCUMENTS = "/v1/Services/{ServiceSid}/Documents"
DOCUMENT = "/v1/Services/{ServiceSid}/Documents/{Sid}"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


Answer = tuple[str, str, str | None, int]
"""The request id, method, route template and status of an HTTP answer."""


def _drive(server: ServerProcess, name: str) -> tuple[list[Answer], list[str]]:
    """Requests carrying every kind of secret; returns the answers and the secrets sent."""
    token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "alice", ttl=600)
    answers: list[tuple[httpx.Response, str | None, int]] = []
    account = httpx.Client(base_url=server.base_url, auth=(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN), timeout=10)
    key = httpx.Client(base_url=server.base_url, auth=(TEST_API_KEY_SID, TEST_API_KEY_SECRET), timeout=10)
    with account, key:
        base = "/v1/Services/default/Documents"
        answers.append((account.post(base, data={"UniqueName": name, "Data": "{}"}), DOCUMENTS, 201))
        answers.append((account.post(base, data={"UniqueName": f"{name}-2", "Data": "{}"}), DOCUMENTS, 201))
        answers.append((key.get(f"{base}/{name}"), DOCUMENT, 200))
        first = key.get(base, params={"PageSize": "1"})
        answers.append((first, DOCUMENTS, 200))
        answers.append((key.get(first.json()["meta"]["next_page_url"]), DOCUMENTS, 200))
        stale = key.post(f"{base}/{name}", data={"Data": "{}"}, headers={"If-Match": "9"})
        answers.append((stale, DOCUMENT, 412))
        answers.append((account.get("/v1/Services", auth=("nobody", TEST_AUTH_TOKEN)), "/v1/Services", 401))
        answers.append((account.get(f"/v1/Services/default/Nothing/{name}"), None, 404))
        answers.append((account.delete(f"{base}/{name}-2"), DOCUMENT, 204))
        answers.append((account.get("/healthz"), "/healthz", 200))
    for response, _, status in answers:
        assert response.status_code == status, response.text
    # An access token in the query string: accepted, then the session is closed by the client.
    with connect(f"{server.base_url.replace('http', 'ws')}/ws?token={token}", proxy=None) as ws:
        assert json.loads(ws.recv(timeout=10))["event"] == "connected"
    # A forged token is refused (4401) after the handshake, which uvicorn logs with the query.
    with connect(f"{server.base_url.replace('http', 'ws')}/ws?token={token}x", proxy=None) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4401
    # A request line over the limit, carrying the token: refused (414) and logged as a warning.
    assert _raw_status(server, f"/v1/Services?token={token}&pad={'p' * Limits.max_request_line_bytes}") == 414
    basic = base64.b64encode(f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}".encode()).decode()
    secrets = [TEST_AUTH_TOKEN, TEST_API_KEY_SECRET, token, token.rsplit(".", 1)[1], basic, name]
    return [
        (response.headers["Twilio-Request-Id"], response.request.method, route, status)
        for response, route, status in answers
    ], secrets


def _raw_status(server: ServerProcess, target: str) -> int:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            head += sock.recv(4096)
    return int(head.split(b" ")[1])


def _log_with(server: ServerProcess, needles: list[str]) -> str:
    """The server's log once every needle is in it (the access line follows the response)."""
    deadline = time.monotonic() + 10
    while True:
        text = server.log_path.read_text(errors="replace")
        if all(needle in text for needle in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.fixture
def json_server(redis_proc: RedisProcess, tmp_path: Path) -> Iterator[ServerProcess]:
    args = ["--log-format", "json"]
    with ServerProcess(tmp_path, redis_url=redis_proc.url, workers=2, args=args) as server:
        yield server


@pytest.fixture
def text_server(redis_proc: RedisProcess, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"SYNC_LOG_FORMAT": "text"}
    with ServerProcess(tmp_path, redis_url=redis_proc.url, env=env) as server:
        yield server


def test_json_logs_are_one_object_a_line_with_ids_and_no_secrets(json_server: ServerProcess) -> None:
    answers, secrets = _drive(json_server, "json-logs-private-name")
    _log_with(json_server, [rid for rid, *_ in answers] + ["[accepted]", "Refused a request"])
    json_server.stop()
    text = json_server.log_path.read_text(errors="replace")
    entries = [json.loads(line) for line in text.splitlines()]  # every line, or this raises
    for entry in entries:
        assert ISO_UTC.fullmatch(entry["time"]) and entry["level"] and entry["logger"], entry
        assert isinstance(entry["message"], str), entry
    access = {e["request_id"]: e for e in entries if e["logger"] == "sync_server.access"}
    for rid, method, route, status in answers:
        logged = access[rid]
        assert (logged["method"], logged.get("route"), logged["status"]) == (method, route, status)
        assert logged["duration_ms"] >= 0 and rid in logged["message"]
        assert logged.get("identity") == (None if status == 401 or route == "/healthz" else "system")
    # One access line per request: the app's, none of uvicorn's.
    assert not any(e["logger"] == "uvicorn.access" for e in entries)
    assert sorted(access) == sorted(e["request_id"] for e in entries if e["logger"] == "sync_server.access")
    assert len({rid for rid, *_ in answers}) == len(answers)
    # Both workers and the supervisor logged, all in JSON.
    started = [e["message"] for e in entries if e["message"].startswith("Started server process")]
    assert len(started) == 2 and any(e["message"].startswith("Started parent process") for e in entries)
    assert any("Refused a request" in e["message"] and e["level"] == "WARNING" for e in entries)
    assert any("token=<redacted>" in e["message"] and "[accepted]" in e["message"] for e in entries)
    for secret in secrets:
        assert secret not in text


def test_text_logs_name_ids_routes_and_no_secrets(text_server: ServerProcess) -> None:
    answers, secrets = _drive(text_server, "text-logs-private-name")
    text = _log_with(text_server, [rid for rid, *_ in answers] + ["[accepted]", "Refused a request"])
    lines = text.splitlines()
    for rid, method, route, status in answers:
        [line] = [line for line in lines if rid in line]
        assert line.startswith("INFO:") and f'"{method} {route or "-"} HTTP/1.1" {status} ' in line, line
    assert any("Refused a request" in line and line.startswith("WARNING:") for line in lines)
    assert any("/ws?token=<redacted>" in line and "[accepted]" in line for line in lines)
    for secret in secrets:
        assert secret not in text
    assert "Traceback" not in text and "Logging error" not in text


def test_the_log_format_is_a_flag_with_an_environment_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser({}).parse_args(["serve"]).log_format == "text"
    assert build_parser({"SYNC_LOG_FORMAT": "JSON"}).parse_args(["serve"]).log_format == "json"
    flag = build_parser({"SYNC_LOG_FORMAT": "json"}).parse_args(["serve", "--log-format", "text"])
    assert flag.log_format == "text"
    with pytest.raises(SystemExit) as exited:
        build_parser({}).parse_args(["serve", "--log-format", "xml"])
    assert exited.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
