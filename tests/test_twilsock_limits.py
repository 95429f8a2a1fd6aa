"""Twilsock's own bounds, on a real server: the time to send ``init``, and rate limits that count
requests rather than frames (one ``/v4/Subscriptions`` frame may name many documents)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    ServerProcess,
)
from tests.support.twilsock import TwilsockPeer

AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
RATE = 60  # commands per second: the close comes at twice this rate, so 120 requests of burst


@pytest.fixture(scope="module")
def limited(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"SYNC_INIT_TIMEOUT": "1", "SYNC_MAX_COMMANDS_PER_SECOND": str(RATE)}
    server = ServerProcess(
        Path(tmp_path_factory.mktemp("twilsock-limits")), redis_url=redis_proc.url, env=env
    )
    server.start()
    yield server
    server.kill()


def url(server: ServerProcess) -> str:
    return server.base_url.replace("http://", "ws://") + "/v3/wsconnect"


def initialised(server: ServerProcess, ws: object) -> TwilsockPeer:
    peer = TwilsockPeer(ws)  # type: ignore[arg-type]
    token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "alice", "default")
    assert peer.reply_to(peer.send({"method": "init", "token": token})).header["status"]["code"] == 200
    return peer


def subscribe_body(sids: list[str]) -> dict[str, object]:
    requests = [{"object_sid": sid, "object_type": "document", "last_event_id": 0} for sid in sids]
    return {"action": "establish", "correlation_id": 1, "requests": requests}


def test_a_connection_that_never_sends_init_gets_a_close_frame(limited: ServerProcess) -> None:
    with connect(url(limited)) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert 0.9 <= time.monotonic() - started < 3
        # A close frame with a code, not a dropped TCP connection.
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008


def test_a_subscription_batch_over_the_limit_is_refused(limited: ServerProcess) -> None:
    with connect(url(limited)) as ws:
        peer = initialised(limited, ws)
        reply = peer.request("POST", "/v4/Subscriptions", subscribe_body([f"ET{i:032x}" for i in range(101)]))
        assert reply.header["http_status"]["code"] == 400
        # The connection is still usable.
        assert peer.request("GET", "/v3/Documents/anything").header["http_status"]["code"] in (403, 404)


def test_rate_limits_count_the_documents_a_frame_subscribes(limited: ServerProcess) -> None:
    created = httpx.post(f"{limited.base_url}/v1/Services/default/Documents", auth=AUTH)
    assert created.status_code == 201
    sid = created.json()["sid"]
    with connect(url(limited)) as ws:
        peer = initialised(limited, ws)
        # Within the burst (2 x RATE requests): served.
        assert (
            peer.request("POST", "/v4/Subscriptions", subscribe_body([sid] * 60)).header["http_status"][
                "code"
            ]
            == 202
        )
        # Two frames more of 60 each: 180 requests in well under a second, far over the limit.
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(2):
                peer.request("POST", "/v4/Subscriptions", subscribe_body([sid] * 60))
            peer.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
