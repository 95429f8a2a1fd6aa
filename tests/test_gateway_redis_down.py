"""The websocket gateways while Redis is down and just after it is back, on a real server process.

While down, a subscribe is a clean refusal — a 20503 error reply (native), a ``subscription_failed``
with status 503 and code 20503 (Twilsock) — and never a 20500 or a logged traceback; the moment Redis
answers again, subscribes succeed. A client whose documents did not survive the restart (a Redis
without persistence) learns that they are gone: ``removed``, after retrying the 20503s meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from websockets.sync.client import connect as connect_sync

from sync_client import Backoff, DocumentRemoved, SyncClient
from sync_server.embedded import PERSISTENT_ARGS
from sync_server.gateway import twilsock_codec as codec
from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    RedisProcess,
    ServerProcess,
    start_redis,
)
from tests.support.realtime import BASIC, Peer, eventually, ws_url
from tests.test_twilsock_protocol import Peer as TwilsockPeer


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[tuple[RedisProcess, ServerProcess]]:
    """A Redis without persistence (a restart loses every document) and a server on it."""
    redis = start_redis(tmp_path / "redis")
    server = ServerProcess(tmp_path / "server", redis_url=redis.url).start()
    yield redis, server
    server.kill()
    redis.stop()


def create_document(server: ServerProcess, name: str) -> str:
    url = f"{server.base_url}/v1/Services/default/Documents"
    response = httpx.post(url, data={"UniqueName": name, "Data": "{}"}, auth=BASIC)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


def assert_no_traceback(server: ServerProcess) -> None:
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI" not in log, server.log_tail(60)


async def test_native_subscribe_answers_20503_while_redis_is_down(
    isolated: tuple[RedisProcess, ServerProcess],
) -> None:
    redis, server = isolated
    sid = create_document(server, "native")
    subscribed = await Peer.connect(ws_url(server))
    await subscribed.ok("subscribe", doc=sid)

    redis.kill()
    assert await subscribed.wait_closed() == 4508  # events may be lost: "reconnect and resubscribe"
    peer = await Peer.connect(ws_url(server))  # Basic credentials need no Redis
    started = time.monotonic()
    refused = await peer.command("subscribe", doc=sid)
    assert time.monotonic() - started < 1.0  # at once, not after a confirmation timeout
    assert refused["ok"] is False
    assert (refused["error"]["code"], refused["error"]["status"]) == (20503, 503)
    opened = await peer.command("open", name="other")
    assert (opened["error"]["code"], opened["error"]["status"]) == (20503, 503)
    assert (await peer.command("ping"))["ok"] is True  # the connection stays usable

    await asyncio.to_thread(redis.start)  # without persistence: the document is gone now
    missing = await peer.command("subscribe", doc=sid)
    assert (missing["error"]["code"], missing["error"]["status"]) == (54100, 404)
    reply = await peer.ok("open", name="native", data={"v": 1})
    await peer.ok("subscribe", doc=reply["document"]["sid"])
    await peer.close()
    assert_no_traceback(server)


def test_twilsock_subscription_fails_with_503_while_redis_is_down(
    isolated: tuple[RedisProcess, ServerProcess],
) -> None:
    redis, server = isolated
    url = server.base_url.replace("http://", "ws://") + "/v3/wsconnect"
    token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "alice")
    sid = create_document(server, "twilsock")
    redis.kill()
    with connect_sync(url) as ws:
        peer = TwilsockPeer(ws)
        assert peer.reply_to(peer.send({"method": "init", "token": token})).header["status"]["code"] == 200
        request = {"object_sid": sid, "object_type": "document", "last_event_id": 0}
        body = {"action": "establish", "correlation_id": 3, "requests": [request]}
        assert peer.request("POST", "/v4/Subscriptions", body).header["http_status"]["code"] == 202
        failed = peer.notification()
        assert failed["event_type"] == "subscription_failed"
        assert failed["correlation_id"] == 3
        assert (failed["event"]["error"]["status"], failed["event"]["error"]["code"]) == (503, 20503)

        redis.start()
        created = peer.request("POST", "/v3/Documents", {"unique_name": "back", "data": {}})
        assert created.header["http_status"]["code"] == 201
        request["object_sid"] = codec.json_payload(created)["sid"]
        assert peer.request("POST", "/v4/Subscriptions", body).header["http_status"]["code"] == 202
        assert peer.notification()["event_type"] == "subscription_established"
    assert_no_traceback(server)


async def test_the_client_retries_until_it_learns_the_document_is_gone(
    isolated: tuple[RedisProcess, ServerProcess],
) -> None:
    redis, server = isolated
    client = SyncClient(server.base_url, basic=BASIC, backoff=Backoff(initial=0.05, maximum=0.5))
    async with client:
        doc = await client.document("lost", data={"v": 1})
        removed: list[DocumentRemoved] = []
        doc.on("removed", removed.append)
        redis.kill()
        await asyncio.sleep(1.5)  # reconnected meanwhile; every resubscribe got 20503 and is retried
        assert not doc.closed and removed == []
        await asyncio.to_thread(redis.start)
        await eventually(lambda: bool(removed))
        assert removed == [DocumentRemoved(doc.sid, "lost", None, "deleted")]
        assert doc.closed and client.state == "connected"
    assert_no_traceback(server)


async def test_a_redis_still_loading_its_data_is_unavailable_not_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    redis = RedisProcess(directory, args=PERSISTENT_ARGS, unix_socket=False).start()
    server = ServerProcess(tmp_path / "server", redis_url=redis.url).start()
    admin = Redis.from_url(redis.url)
    try:
        sid = create_document(server, "loading")
        # Enough keys to keep it LOADING for a while when they load slowly.
        await admin.eval("for i = 1, 20000 do redis.call('SET', 'filler:' .. i, 'x') end", 0)
        await admin.bgrewriteaof()
        await eventually(lambda: _rewrite_done(admin))
        redis.kill()
        # Slow loading, answering clients every KiB loaded (LOADING): Redis's own debugging options.
        slowly = ("--key-load-delay", "40", "--loading-process-events-interval-bytes", "1024")
        slow = RedisProcess(directory, args=(*PERSISTENT_ARGS, *slowly), port=redis.port)
        starting = asyncio.create_task(asyncio.to_thread(slow.start))  # returns once loaded
        seen: set[tuple[int, int, int]] = set()  # (REST status, its code, the subscribe's code)
        peer = await Peer.connect(ws_url(server))  # Basic credentials need no Redis
        async with httpx.AsyncClient(auth=BASIC, timeout=5) as http:
            while not starting.done():
                loading_before = await _loading(redis.port)
                url = f"{server.base_url}/v1/Services/default/Documents/{sid}"
                response = await http.post(url, data={"Data": "{}"})
                reply = await peer.command("subscribe", doc=sid)
                # Judged only when Redis said LOADING both before and after both requests.
                if loading_before and await _loading(redis.port):
                    code = 0 if reply["ok"] else reply["error"]["code"]
                    seen.add((response.status_code, response.json()["code"], code))
                else:
                    assert response.status_code in (200, 503), response.text
                await asyncio.sleep(0.02)
        await starting
        assert seen == {(503, 20503, 20503)}, f"{seen or 'never caught Redis while it was loading'}"
        await peer.ok("subscribe", doc=sid)  # loaded: at once
        await peer.close()
        assert_no_traceback(server)
    finally:
        await admin.aclose()
        server.kill()
        redis.kill()
        with contextlib.suppress(NameError):
            slow.kill()


async def _rewrite_done(admin: Redis) -> bool:
    info = await admin.info("persistence")
    return info["aof_rewrite_in_progress"] == 0 and info["aof_rewrite_scheduled"] == 0


async def _loading(port: int | None) -> bool:
    """Whether Redis answers PING with LOADING (asked raw: redis-py would retry that)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        return (await reader.readline()).startswith(b"-LOADING")
    except OSError:
        return False
    finally:
        writer.close()
