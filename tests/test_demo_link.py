"""The startup banner's demo link: a ready-to-open ``/demo`` URL with a short-lived token on loopback,
only the way to mint a token when the server listens beyond loopback."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from sync_server.embedded import RedisProcess
from sync_server.tokens import TokenVerifier
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    ServerProcess,
    free_port,
)
from tests.support.realtime import Peer

DEMO_LINE = re.compile(r"^Demo \(as (demo-[0-9a-f]{8}), for 1 h\): (http://\S+)$", re.MULTILINE)


async def test_loopback_banner_prints_a_working_demo_link(redis_proc: RedisProcess, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, redis_url=redis_proc.url).start()
    try:
        match = DEMO_LINE.search(server.log_path.read_text())
        assert match is not None, server.log_tail()
        identity, link = match.groups()
        url = urlsplit(link)
        assert (url.scheme, url.netloc, url.path) == ("http", f"127.0.0.1:{server.port}", "/demo")
        token = parse_qs(url.query)["token"][0]
        grant = TokenVerifier(TEST_ACCOUNT_SID, {TEST_API_KEY_SID: TEST_API_KEY_SECRET}).verify(token)
        assert (grant.identity, grant.service_sid) == (identity, "default")
        assert 3590 < grant.expires_at - time.time() <= 3600
        async with httpx.AsyncClient() as http:
            page = await http.get(link)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        # The demo page opens /ws with the token of its URL.
        peer = await Peer.connect(f"ws://127.0.0.1:{server.port}/ws?token={token}", basic=False)
        assert peer.connected["identity"] == identity
        await peer.close()
    finally:
        server.kill()


def test_no_token_is_printed_beyond_loopback(redis_proc: RedisProcess, tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path, redis_url=redis_proc.url, port=port, args=["--host", "0.0.0.0"]).start()
    try:
        log = server.log_path.read_text()
    finally:
        server.kill()
    assert DEMO_LINE.search(log) is None
    assert "eyJ" not in log  # no JWT anywhere (their header starts so)
    hint = f"Demo: http://127.0.0.1:{port}/demo?token=<token>, "
    hint += "with a token from `sync-server token --identity <name>`"
    assert hint in log.splitlines()
