"""Limits of the websocket gateway on real server processes with small configured limits: frame size,
subscriptions, command rate, malformed commands, slow readers and unanswered pings. Each abuse costs
the abusing connection only; a bystander on the same process keeps working throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from sync_server.embedded import RedisProcess
from sync_server.store import keys
from tests.support.processes import ServerProcess
from tests.support.realtime import (
    BASIC,
    BASIC_HEADER,
    WAIT,
    Peer,
    close_all,
    documents_url,
    eventually,
    start_servers,
    stop_servers,
    ws_url,
)

MAX_FRAME = 8192
MAX_SUBSCRIPTIONS = 5
RATE = 20
MAX_BUFFERED = 64 * 1024
# Queued bytes past the limit (one event) + the transport's high-water mark + the server's fixed send
# buffer (doubled by Linux, plus its bookkeeping) + the client's small receive buffer, with room.
MAX_HELD = 512 * 1024


@pytest.fixture(scope="module")
def tight(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Small frame, subscription and rate limits, and a ping every second."""
    env = {
        "SYNC_MAX_FRAME_BYTES": str(MAX_FRAME),
        "SYNC_MAX_SUBSCRIPTIONS": str(MAX_SUBSCRIPTIONS),
        "SYNC_MAX_COMMANDS_PER_SECOND": str(RATE),
        "SYNC_PING_INTERVAL": "1",
    }
    [proc] = start_servers(tmp_path_factory.mktemp("tight"), redis_proc.url, count=1, env=env)
    yield proc
    stop_servers([proc])


@pytest.fixture(scope="module")
def buffered(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A small outgoing buffer per connection; no practical command rate limit (for the writer)."""
    env = {"SYNC_MAX_BUFFERED_BYTES": str(MAX_BUFFERED), "SYNC_MAX_COMMANDS_PER_SECOND": "100000"}
    [proc] = start_servers(tmp_path_factory.mktemp("buffered"), redis_proc.url, count=1, env=env)
    yield proc
    stop_servers([proc])


@pytest.fixture
async def bystander(tight: ServerProcess, service: str) -> AsyncIterator[Peer]:
    """A well-behaved connection on the tight server, subscribed to ``watched``."""
    peer = await Peer.connect(ws_url(tight, service=service))
    await peer.ok("open", name="watched")
    yield peer
    await peer.close()


async def assert_unaffected(bystander: Peer, server: ServerProcess, service: str) -> None:
    """The bystander is still connected, answered, and receives its document's events."""
    before = len(bystander.events)
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as http:
        response = await http.post(
            documents_url(server, service, "watched"), data={"Data": '{"still": "here"}'}
        )
    assert response.status_code == 200
    await bystander.wait_until(lambda p: len(p.events) > before)
    await bystander.ok("ping")
    assert bystander.close_code is None


def errors_of(peer: Peer) -> list[tuple[Any, int]]:
    return [(f["id"], f["error"]["code"]) for f in peer.frames if f.get("ok") is False]


async def test_oversized_frame_closes_with_1009(tight: ServerProcess, service: str, bystander: Peer) -> None:
    peer = await Peer.connect(ws_url(tight, service=service))
    await peer.ok("ping")
    await peer.ws.send(json.dumps({"id": 2, "op": "set", "doc": "big", "data": {"x": "y" * MAX_FRAME}}))
    assert await peer.wait_closed() == 1009
    await assert_unaffected(bystander, tight, service)


async def test_subscriptions_over_the_limit_are_refused(
    tight: ServerProcess, service: str, bystander: Peer
) -> None:
    peer = await Peer.connect(ws_url(tight, service=service))
    try:
        for i in range(MAX_SUBSCRIPTIONS):
            await peer.ok("open", name=f"sub-{i}")
        refused = await peer.command("open", name="one-too-many")
        assert refused["ok"] is False and refused["error"]["status"] == 429, refused
        # Still usable, and still subscribed to the others.
        await peer.ok("unsubscribe", doc="sub-0")
        await peer.ok("subscribe", doc="one-too-many")
        await assert_unaffected(bystander, tight, service)
        assert peer.close_code is None
    finally:
        await peer.close()


async def test_command_flood_is_refused_then_closed(
    tight: ServerProcess, service: str, bystander: Peer
) -> None:
    # A burst over the limit but under twice it: the excess is refused (54009), the connection stays.
    peer = await Peer.connect(ws_url(tight, service=service))
    replies = [await peer.send_command("ping") for _ in range(RATE + RATE // 2)]
    answered = [await asyncio.wait_for(reply, WAIT) for reply in replies]
    refused = [reply["id"] for reply in answered if reply["ok"] is False]
    assert refused and all(code == 54009 for _, code in errors_of(peer))
    assert set(refused) == {reply["id"] for reply in answered} - {r["id"] for r in answered if r["ok"]}
    await asyncio.sleep(1.5)  # the bucket refills
    await peer.ok("ping")
    await peer.close()

    # Far over the limit: refusals, then the connection is closed with 4429.
    flooder = await Peer.connect(ws_url(tight, service=service))
    with contextlib.suppress(ConnectionClosed):  # the server may close before the last one is sent
        for _ in range(RATE * 5):
            await flooder.send_command("ping")
    assert await flooder.wait_closed() == 4429
    assert errors_of(flooder) and {code for _, code in errors_of(flooder)} == {54009}
    await assert_unaffected(bystander, tight, service)


async def test_malformed_commands_get_error_replies(
    tight: ServerProcess, service: str, bystander: Peer
) -> None:
    peer = await Peer.connect(ws_url(tight, service=service))
    try:
        frames = [
            "{not json",
            "[1, 2]",
            json.dumps({"op": "ping"}),
            json.dumps({"id": True, "op": "ping"}),
            json.dumps({"id": 7, "op": "launch"}),
            json.dumps({"id": 8, "op": "set"}),
            json.dumps({"id": "nine", "op": "set", "doc": "d", "data": [1]}),
            json.dumps({"id": 10, "op": "open", "name": "d", "ttl": 1.5}),
        ]
        for frame in frames:
            await peer.ws.send(frame)
        await peer.wait_until(lambda p: len(errors_of(p)) == len(frames))
        assert errors_of(peer) == [
            (None, 20001),
            (None, 20001),
            (None, 20001),
            (None, 20001),
            (7, 20001),
            (8, 20001),
            ("nine", 54101),
            (10, 54011),
        ]
        assert "missing field 'doc'" in peer.frames[5]["error"]["message"]
        await peer.ok("ping")
        await assert_unaffected(bystander, tight, service)
    finally:
        await peer.close()


# --- clients that do not read -------------------------------------------------------------------------


class SilentSocket:
    """A websocket client on a bare socket that reads only when a test tells it to.

    Not reading means no pong is ever sent, and with a small ``SO_RCVBUF`` the server's writes soon
    back up into its own buffers, as with a client on a slow link.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.received: list[tuple[float, int]] = []

    @classmethod
    async def connect(cls, url: str, *, receive_buffer: int | None = None) -> SilentSocket:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, (uri.host, uri.port))
        protocol = ClientProtocol(uri, max_size=None)
        request = protocol.connect()
        request.headers["Authorization"] = BASIC_HEADER
        protocol.send_request(request)
        await loop.sock_sendall(sock, b"".join(protocol.data_to_send()))
        async with asyncio.timeout(WAIT):
            while not isinstance(response := next(iter(protocol.events_received()), None), Response):
                protocol.receive_data(await loop.sock_recv(sock, 4096))
        assert response.status_code == 101
        return cls(sock, protocol)

    async def send(self, command: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(command).encode())
        await asyncio.get_running_loop().sock_sendall(self.sock, b"".join(self.protocol.data_to_send()))

    async def read_to_close(self, *, rate: float | None = None) -> tuple[list[Frame], int | None]:
        """Reads everything the server sent, up to its close frame (or the end of the stream); at
        ``rate`` bytes per second when given. :attr:`received` records when each read came."""
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        async with asyncio.timeout(WAIT):
            while True:
                data = await loop.sock_recv(self.sock, 4096 if rate else 1 << 18)
                if not data:
                    return frames, None
                self.received.append((time.monotonic(), len(data)))
                if rate:
                    await asyncio.sleep(len(data) / rate)
                self.protocol.receive_data(data)
                for frame in self.protocol.events_received():
                    assert isinstance(frame, Frame)
                    if frame.opcode is Opcode.CLOSE:
                        return frames, Close.parse(frame.data).code
                    frames.append(frame)

    def close(self) -> None:
        self.sock.close()


async def _numsub(redis: Redis, channel: str, expected: int) -> bool:
    """Whether ``expected`` server connections subscribe to ``channel`` (one per process)."""
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count) == expected


async def test_slow_reader_is_closed_with_4508_while_others_get_every_event(
    buffered: ServerProcess, service: str, redis: Redis
) -> None:
    url = ws_url(buffered, service=service)
    writer, fast = await Peer.connect(url), await Peer.connect(url)
    await writer.ok("open", name="stream", subscribe=False)
    probe_sid = (await writer.ok("open", name="probe", subscribe=False))["document"]["sid"]
    await fast.ok("subscribe", doc="stream")
    slow = await SilentSocket.connect(url, receive_buffer=4096)
    try:
        await slow.send({"id": 1, "op": "subscribe", "doc": "stream"})
        # Only the slow client subscribes to the probe: its Redis subscription ends with the session.
        await slow.send({"id": 2, "op": "subscribe", "doc": "probe"})
        probe = keys.document_channel(service, probe_sid)
        await eventually(lambda: _numsub(redis, probe, 1))

        # Events of ~15 KB until the server gives up on the slow client (the kernel's socket buffers
        # take a few MB first), in rounds, so that its close frame is read well before the server's
        # two-second wait for the closing handshake runs out.
        blob, written = "x" * 15_000, 0
        while not await _numsub(redis, probe, 0):
            assert written < 2000, "the slow client was never disconnected"
            rounds = [
                await writer.send_command("set", doc="stream", data={"i": written + i, "blob": blob})
                for i in range(20)
            ]
            for reply in rounds:
                assert (await asyncio.wait_for(reply, WAIT))["ok"] is True
            written += len(rounds)
        gave_up = time.monotonic()
        frames, code = await slow.read_to_close()
        assert code == 4508
        assert time.monotonic() - gave_up < 1.0
        texts = [json.loads(bytes(frame.data)) for frame in frames if frame.opcode is Opcode.TEXT]
        revisions = [int(t["document"]["revision"], 16) for t in texts if t.get("event") == "updated"]
        assert revisions == list(range(1, len(revisions) + 1)) and len(revisions) < written
        # What stood between the server's decision and the close frame: the transport's high-water
        # mark and the fixed kernel buffers on both sides, not the several MB autotuning would allow.
        held = sum(size for _, size in slow.received)
        assert held < MAX_HELD, held
        print(f"slow client: {len(revisions)} of {written} events, {held} bytes before 4508")

        # The fast subscriber on the same process got every event, in order.
        await fast.wait_until(lambda p: len(p.events) == written)
        assert [int(e["document"]["revision"], 16) for e in fast.events] == list(range(1, written + 1))
        assert [e["document"]["data"]["i"] for e in fast.events] == list(range(written))
        assert fast.close_code is None
    finally:
        slow.close()
        await close_all([writer, fast])


async def test_slowly_reading_client_reads_its_4508_soon_while_others_get_every_event(
    buffered: ServerProcess, service: str, redis: Redis
) -> None:
    url = ws_url(buffered, service=service)
    writer, fast = await Peer.connect(url), await Peer.connect(url)
    await writer.ok("open", name="trickle", subscribe=False)
    probe_sid = (await writer.ok("open", name="trickle-probe", subscribe=False))["document"]["sid"]
    await fast.ok("subscribe", doc="trickle")
    slow = await SilentSocket.connect(url, receive_buffer=16384)
    try:
        await slow.send({"id": 1, "op": "subscribe", "doc": "trickle"})
        await slow.send({"id": 2, "op": "subscribe", "doc": "trickle-probe"})
        probe = keys.document_channel(service, probe_sid)
        await eventually(lambda: _numsub(redis, probe, 1))
        # It reads all along, at 200 KB/s: a tenth or less of what the writer produces.
        reader = asyncio.create_task(slow.read_to_close(rate=200_000))

        blob, written = "x" * 15_000, 0
        while not await _numsub(redis, probe, 0):
            assert written < 2000, "the slow client was never disconnected"
            rounds = [
                await writer.send_command("set", doc="trickle", data={"i": written + i, "blob": blob})
                for i in range(20)
            ]
            for reply in rounds:
                assert (await asyncio.wait_for(reply, WAIT))["ok"] is True
            written += len(rounds)
        gave_up = time.monotonic()
        frames, code = await reader
        closed_after = time.monotonic() - gave_up
        assert code == 4508
        # The close frame came right behind what the kernel and the transport held: at 200 KB/s,
        # a couple of seconds of reading, not a minute.
        late = sum(size for at, size in slow.received if at >= gave_up)
        assert late < MAX_HELD, late
        assert closed_after < 5.0, closed_after
        texts = [json.loads(bytes(frame.data)) for frame in frames if frame.opcode is Opcode.TEXT]
        revisions = [int(t["document"]["revision"], 16) for t in texts if t.get("event") == "updated"]
        assert revisions == list(range(1, len(revisions) + 1)) and len(revisions) < written
        print(f"slow reader: 4508 {closed_after:.2f}s after the server gave up, {late} bytes read meanwhile")

        await fast.wait_until(lambda p: len(p.events) == written)
        assert [int(e["document"]["revision"], 16) for e in fast.events] == list(range(1, written + 1))
        assert fast.close_code is None
    finally:
        slow.close()
        await close_all([writer, fast])


async def test_client_that_does_not_answer_pings_is_dropped(
    tight: ServerProcess, service: str, redis: Redis, bystander: Peer
) -> None:
    peer = await Peer.connect(ws_url(tight, service=service))
    sid = (await peer.ok("open", name="unanswered", subscribe=False))["document"]["sid"]
    silent = await SilentSocket.connect(ws_url(tight, service=service))
    try:
        await silent.send({"id": 1, "op": "subscribe", "doc": sid})
        channel = keys.document_channel(service, sid)
        await eventually(lambda: _numsub(redis, channel, 1))
        # A ping each second, a second to answer it: the silent client is gone soon after.
        await eventually(lambda: _numsub(redis, channel, 0))
        frames, code = await silent.read_to_close()
        assert Opcode.PING in {frame.opcode for frame in frames}
        assert code == 1011
        # Connections that answer pings (websockets does it by itself) stay.
        await peer.ok("ping")
        await assert_unaffected(bystander, tight, service)
    finally:
        silent.close()
        await peer.close()
