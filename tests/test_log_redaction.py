"""Secrets in query strings are redacted from every log line, and the line itself is kept: uvicorn's
access lines (whose formatter needs its arguments intact), the websocket handshake lines, and records
of any ``sync_server`` child logger. ``PageToken`` is a cursor, not a secret, and stays readable.
"""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import pytest
from uvicorn.logging import AccessFormatter
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sync_server import redaction
from tests.support.processes import ServerProcess


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws?token=abc.def", "/ws?token=<redacted>"),
        ("/ws?service=x&Token=abc&identity=a", "/ws?service=x&Token=<redacted>&identity=a"),
        (
            "/x?access_token=1&auth_token=2&secret=3",
            "/x?access_token=<redacted>&auth_token=<redacted>&secret=<redacted>",
        ),
        (
            "/v1/Services/x/Documents?PageSize=2&PageToken=PT9",
            "/v1/Services/x/Documents?PageSize=2&PageToken=PT9",
        ),
        ("/x?page_token=a&mytoken=b&x.token=c", "/x?page_token=a&mytoken=b&x.token=c"),
        ("token=solo", "token=<redacted>"),
        ("no query at all", "no query at all"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redaction.redact(text) == expected


def _access_record(path: str) -> logging.LogRecord:
    factory = logging.getLogRecordFactory()
    return factory(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200),
        None,
    )


def test_access_line_is_kept_with_the_secret_redacted() -> None:
    redaction.install()
    redaction.install()  # idempotent
    record = _access_record("/ws?token=s3cret&PageToken=PT1")
    line = AccessFormatter("%(client_addr)s - %(request_line)s %(status_code)s", use_colors=False).format(
        record
    )
    assert line == "127.0.0.1:5000 - GET /ws?token=<redacted>&PageToken=PT1 HTTP/1.1 200 OK"


def test_child_loggers_of_sync_server_are_covered(caplog: pytest.LogCaptureFixture) -> None:
    redaction.install()
    with caplog.at_level(logging.INFO, logger="sync_server.gateway.native"):
        logging.getLogger("sync_server.gateway.native").info("opened %s", "/ws?secret=hunter2")
        logging.getLogger("sync_server.gateway.native").info("inline /ws?token=hunter3")
    assert caplog.messages == ["opened /ws?secret=<redacted>", "inline /ws?token=<redacted>"]


def test_server_log_keeps_access_lines_without_secrets(server: ServerProcess) -> None:
    marker = uuid.uuid4().hex
    with httpx.Client(base_url=server.base_url, auth=server.auth, timeout=5) as http:
        listed = http.get(f"/v1/Services?token={marker}x&m={marker}")
        assert listed.status_code == 200
    # uvicorn logs a websocket handshake with its query string; this token is refused (4401).
    url = server.base_url.replace("http://", "ws://") + f"/ws?token={marker}x&PageToken=PT{marker}"
    with connect(url, proxy=None) as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert ws.close_code == 4401
    request_id = listed.headers["Twilio-Request-Id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = server.log_path.read_text(errors="replace")
        if f"PT{marker}" in text and request_id in text:
            break
        time.sleep(0.05)
    # The app's access line names the route, never the query (logs.py).
    [access] = [line for line in text.splitlines() if request_id in line]
    assert '"GET /v1/Services HTTP/1.1" 200' in access, access
    handshake = f'"WebSocket /ws?token=<redacted>&PageToken=PT{marker}" [accepted]'
    lines = [line for line in text.splitlines() if marker in line]
    assert any(handshake in line for line in lines), lines
    assert f"{marker}x" not in text
    assert "Logging error" not in text and "Traceback" not in text
