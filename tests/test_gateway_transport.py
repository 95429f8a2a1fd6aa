"""The websocket transport (``gateway/uvicorn_ws.py``, ``gateway/keepalive.py``): a connection is a
protocol object driven by callbacks, with no task while it is idle; frames are served one at a time
in arrival order; the wire cases the session never sees (fragments, binary and invalid text frames,
refused handshakes, the closing handshake) behave as RFC 6455 says.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import uvicorn
from redis.asyncio import Redis
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.gateway import WEBSOCKET_PROTOCOL
from sync_server.gateway.keepalive import Keepalive
from sync_server.store import keys
from tests.support.processes import ServerProcess, free_port
from tests.support.realtime import BASIC_HEADER, WAIT, Peer, close_all, eventually, ws_url

# -- the keepalive, on its own ------------------------------------------------------------------------


class Member:
    """A keepalive member that records what happened to it, and answers pings when told to."""

    def __init__(self, keepalive: Keepalive, *, answers: bool) -> None:
        self.keepalive = keepalive
        self.answers = answers
        self.keepalive_slot = -1
        self.pong_due = False
        self.pings: list[float] = []
        self.timed_out: float | None = None

    def ping(self, payload: bytes) -> None:
        assert len(payload) == 4
        self.pings.append(time.monotonic())
        if self.answers:
            asyncio.get_running_loop().call_soon(self.keepalive.answered, self)

    def keepalive_timeout(self) -> None:
        self.timed_out = time.monotonic()
        self.keepalive.remove(self)


async def test_keepalive_pings_each_interval_and_drops_the_silent() -> None:
    interval = 0.2
    keepalive = Keepalive(asyncio.get_running_loop(), interval, interval)
    tick = interval / 16
    started = time.monotonic()
    lively, silent, gone = (Member(keepalive, answers=answers) for answers in (True, False, True))
    for member in (lively, silent, gone):
        keepalive.add(member)
    keepalive.remove(gone)
    await asyncio.sleep(interval * 4.5)

    # Never early, at most a tick (plus loop lag) late.
    gaps = [b - a for a, b in zip([started, *lively.pings], lively.pings, strict=False)]
    assert len(lively.pings) >= 3, lively.pings
    assert all(interval - 0.01 <= gap <= interval + tick + 0.1 for gap in gaps), gaps
    assert lively.timed_out is None
    # The silent one: pinged once, then dropped a timeout later, and never pinged again.
    assert len(silent.pings) == 1 and silent.timed_out is not None
    assert interval - 0.01 <= silent.timed_out - silent.pings[0] <= interval + tick + 0.1
    assert gone.pings == []
    assert len(keepalive) == 1
    keepalive.remove(lively)
    assert len(keepalive) == 0


async def test_keepalive_off_pings_nobody() -> None:
    keepalive = Keepalive(asyncio.get_running_loop(), None, None)
    member = Member(keepalive, answers=False)
    keepalive.add(member)
    await asyncio.sleep(0.05)
    assert (member.pings, member.keepalive_slot, len(keepalive)) == ([], -1, 0)


# -- no task per idle connection (uvicorn in this process) ---------------------------------------------


@pytest.fixture
async def in_process(settings: Settings) -> AsyncIterator[uvicorn.Server]:
    """The app on uvicorn in this test's event loop, with the gateway's websocket protocol."""
    config = uvicorn.Config(
        create_app(replace(settings, allowed_hosts=("*",))),
        host="127.0.0.1",
        port=free_port(),
        ws=WEBSOCKET_PROTOCOL,
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    yield server
    server.should_exit = True
    await asyncio.wait_for(serving, WAIT)


def server_side_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running websocket server code: the gateway's, or uvicorn's websocket protocols' (the
    test's own clients run websockets' client code; the app's sweeper and hub are not per connection)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if "sync_server/gateway" in filename or "uvicorn/protocols" in filename:
            found.append(task)
    return found


async def test_idle_subscribed_connections_hold_no_task(in_process: uvicorn.Server, service: str) -> None:
    port = in_process.config.port
    url = f"ws://127.0.0.1:{port}/ws?service={service}"
    peers = [await Peer.connect(url) for _ in range(30)]
    try:
        for peer in peers:
            await peer.ok("open", name="idle-doc")
        await peers[0].ok("set", doc="idle-doc", data={"n": 1})
        await asyncio.gather(*(p.wait_until(lambda p: len(p.events) == 1) for p in peers))
        await asyncio.sleep(0.1)
        # uvicorn's own websocket protocol keeps one ASGI task per connection in this set.
        assert in_process.server_state.tasks == set()
        assert server_side_tasks() == []
        assert len(in_process.server_state.connections) == len(peers)
    finally:
        await close_all(peers)
    # Closed connections leave nothing behind either.
    await eventually(lambda: not in_process.server_state.connections)
    await eventually(lambda: not in_process.server_state.tasks)


# -- the wire ------------------------------------------------------------------------------------------


class RawSocket:
    """A websocket client on a bare socket, sending exactly the frames a test builds."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.early: list[Frame] = []
        """Frames that came in the same read as the handshake response."""

    @classmethod
    async def connect(cls, url: str) -> RawSocket:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, (uri.host, uri.port))
        protocol = ClientProtocol(uri, max_size=None)
        request = protocol.connect()
        request.headers["Authorization"] = BASIC_HEADER
        protocol.send_request(request)
        raw = cls(sock, protocol)
        await raw.flush()
        events: list[Any] = []
        async with asyncio.timeout(WAIT):
            while not events:
                protocol.receive_data(await loop.sock_recv(sock, 4096))
                events = protocol.events_received()
        response, *raw.early = events
        assert isinstance(response, Response) and response.status_code == 101
        return raw

    async def flush(self) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, b"".join(self.protocol.data_to_send()))

    async def frames(self, count: int | None = None) -> tuple[list[Frame], int | None]:
        """Data frames until ``count`` of them arrived, or until the close frame (its code)."""
        loop = asyncio.get_running_loop()
        got, self.early = self.early, []
        async with asyncio.timeout(WAIT):
            while count is None or len(got) < count:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    return got, None
                self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    assert isinstance(event, Frame)
                    if event.opcode is Opcode.CLOSE:
                        return got, Close.parse(event.data).code
                    if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                        got.append(event)
        return got, None

    def close(self) -> None:
        self.sock.close()


def replies(frames: list[Frame]) -> list[dict[str, Any]]:
    return [json.loads(bytes(frame.data)) for frame in frames]


async def test_fragmented_and_binary_commands_are_served(server: ServerProcess, service: str) -> None:
    raw = await RawSocket.connect(ws_url(server, service=service))
    try:
        [connected], _ = await raw.frames(1)
        assert replies([connected])[0]["event"] == "connected"
        command = json.dumps({"id": 1, "op": "ping"}).encode()
        raw.protocol.send_text(command[:5], fin=False)
        raw.protocol.send_continuation(command[5:9], fin=False)
        raw.protocol.send_ping(b"in between")  # control frames may come between fragments
        raw.protocol.send_continuation(command[9:], fin=True)
        raw.protocol.send_binary(json.dumps({"id": 2, "op": "ping"}).encode())
        await raw.flush()
        frames, _ = await raw.frames(2)
        assert [(r["id"], r["ok"]) for r in replies(frames)] == [(1, True), (2, True)]
    finally:
        raw.close()


async def test_commands_in_one_read_are_answered_in_order(server: ServerProcess, service: str) -> None:
    raw = await RawSocket.connect(ws_url(server, service=service))
    try:
        await raw.frames(1)
        # The first awaits Redis while the others wait their turn: replies keep the commands' order.
        commands = [
            {"id": 1, "op": "open", "name": "ordered", "data": {"n": 1}},
            {"id": 2, "op": "ping"},
            {"id": 3, "op": "set", "doc": "ordered", "data": {"n": 2}},
            {"id": 4, "op": "fetch", "doc": "ordered"},
            {"id": 5, "op": "ping"},
        ]
        for command in commands:
            raw.protocol.send_text(json.dumps(command).encode())
        await raw.flush()
        frames, _ = await raw.frames(6)  # the subscription's event comes too
        answered = [r for r in replies(frames) if "id" in r]
        assert [r["id"] for r in answered] == [1, 2, 3, 4, 5]
        assert answered[3]["document"]["data"] == {"n": 2}
    finally:
        raw.close()


async def test_invalid_utf8_closes_with_1007(server: ServerProcess, service: str) -> None:
    raw = await RawSocket.connect(ws_url(server, service=service))
    try:
        await raw.frames(1)
        raw.protocol.send_text(b'{"id": 1, "op": "\xff"}')
        await raw.flush()
        assert (await raw.frames())[1] == 1007
    finally:
        raw.close()


async def test_the_peer_closing_releases_its_subscriptions(
    server: ServerProcess, service: str, redis: Redis
) -> None:
    peer = await Peer.connect(ws_url(server, service=service))
    sid = (await peer.ok("open", name="leaving"))["document"]["sid"]
    channel = keys.document_channel(service, sid)

    async def subscribers() -> int:
        [(_, count)] = await redis.pubsub_numsub(channel)
        return int(count)

    assert await subscribers() == 1
    await peer.close()
    assert peer.close_code == 1000  # the server echoed the close frame
    await eventually(lambda: _is_zero(subscribers()))


async def _is_zero(count: Any) -> bool:
    return int(await count) == 0


def upgrade(server: ServerProcess, path: str, *, key: bool = True) -> bytes:
    """The raw answer to a websocket upgrade request."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
        ]
        if key:
            lines.append("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_refused_handshakes_get_http_answers(server: ServerProcess) -> None:
    unknown = upgrade(server, "/nowhere")
    head, _, body = unknown.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 "), unknown
    assert json.loads(body)["status"] == 404 and json.loads(body)["code"] == 20404
    malformed = upgrade(server, "/ws", key=False)
    assert malformed.startswith(b"HTTP/1.1 400 "), malformed
