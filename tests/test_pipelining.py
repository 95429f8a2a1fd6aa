"""Pipelined commands on the native protocol, and the batched fan-out they feed.

A client may send commands without waiting for replies (protocol/README.md). The server starts each
document read or write in arrival order without waiting for the ones before it (session.py), so
one connection's writes reach Redis, and apply, in the order sent; replies still come in command
order, and a command that changes the session (subscribe, open…) waits for the ones before it.
The events that one pub/sub read brings for a document go to each subscriber as one write
(subscriptions.fan_out): checked here in-process against a real Redis, store and hub, with an
outbox that records each write. So do the replies that become ready together: one write, in
command order (Session._send_ready), checked in-process with commands whose work waits on a gate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from sync_server.config import Limits
from sync_server.documents import DocumentService
from sync_server.events import DocumentEvent, decode_event
from sync_server.gateway.frames import OutFrame, out_frame
from sync_server.gateway.native import NativeSession
from sync_server.gateway.session import Session
from sync_server.gateway.subscriptions import BATCH_WRITE_BYTES, Subscriptions, _Subscription, fan_out
from sync_server.hub import Hub
from sync_server.principal import Principal
from sync_server.store.redis_store import RedisStore
from sync_server.store.scripts import load_scripts
from tests.support.processes import RedisProcess, ServerProcess, start_redis
from tests.support.realtime import WAIT, Peer, close_all, eventually, start_servers, stop_servers, ws_url

# -- over a real server ---------------------------------------------------------------------------


async def send_all(peer: Peer, commands: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sends every command before reading any reply; returns the replies in command order."""
    futures = [await peer.send_command(op, **fields) for op, fields in commands]
    return [await asyncio.wait_for(future, WAIT) for future in futures]


def reply_ids(peer: Peer) -> list[Any]:
    return [frame["id"] for frame in peer.frames if "event" not in frame]


async def test_pipelined_writes_apply_in_order_and_are_answered_in_order(
    server: ServerProcess, service: str
) -> None:
    url = ws_url(server, service=service)
    writer, watcher = await Peer.connect(url), await Peer.connect(url)
    try:
        created = await writer.ok("open", name="pipelined", data={"n": -1}, subscribe=False)
        assert created["document"]["revision"] == "0"
        await watcher.ok("subscribe", doc="pipelined")
        count = 40
        replies = await send_all(
            writer, [("set", {"doc": "pipelined", "data": {"n": i}}) for i in range(count)]
        )
        # Each write saw the one before it: revisions 1..40 in the order sent, each with its own data.
        assert [r["document"]["revision"] for r in replies] == [format(i + 1, "x") for i in range(count)]
        assert [r["document"]["data"] for r in replies] == [{"n": i} for i in range(count)]
        before = len(reply_ids(writer)) - count
        assert reply_ids(writer)[before:] == [r["id"] for r in replies]
        fetched = await writer.ok("fetch", doc="pipelined")
        assert fetched["document"]["data"] == {"n": count - 1}
        # The subscriber gets every revision once, in order, with the data written under it.
        await watcher.wait_until(lambda p: len(p.events) >= count)
        assert [int(e["document"]["revision"], 16) for e in watcher.events] == list(range(1, count + 1))
        assert [e["document"]["data"] for e in watcher.events] == [{"n": i} for i in range(count)]
    finally:
        await close_all([writer, watcher])


async def test_failures_keep_their_turn_and_touch_nothing_else(server: ServerProcess, service: str) -> None:
    peer = await Peer.connect(ws_url(server, service=service))
    try:
        await peer.ok("open", name="turns", data={"v": 0}, subscribe=False)
        replies = await send_all(
            peer,
            [
                ("set", {"doc": "turns", "data": {"v": 1}}),
                ("set", {"doc": "turns", "data": {"v": 2}, "if_match": "0"}),  # stale: 412
                ("fetch", {"doc": "no-such-document"}),  # 404
                ("update", {"doc": "turns", "data": {"w": 3}}),
                ("ping", {}),
                ("fetch", {"doc": "turns"}),
            ],
        )
        assert [r["ok"] for r in replies] == [True, False, False, True, True, True]
        assert replies[1]["error"]["code"] == 54103 and replies[1]["error"]["status"] == 412
        assert replies[2]["error"]["code"] == 54100
        assert replies[5]["document"] == {**replies[3]["document"]}
        assert replies[5]["document"]["data"] == {"v": 1, "w": 3}
        assert replies[5]["document"]["revision"] == "2"
    finally:
        await peer.close()


async def test_a_subscribe_waits_for_the_writes_sent_before_it(server: ServerProcess, service: str) -> None:
    peer = await Peer.connect(ws_url(server, service=service))
    try:
        await peer.ok("open", name="settled", data={"n": 0}, subscribe=False)
        commands: list[tuple[str, dict[str, Any]]] = [
            ("set", {"doc": "settled", "data": {"n": i}}) for i in range(1, 11)
        ]
        commands.append(("subscribe", {"doc": "settled"}))
        commands.append(("set", {"doc": "settled", "data": {"n": 11}}))
        replies = await send_all(peer, commands)
        snapshot = replies[10]["document"]
        # The snapshot comes after all ten writes, and only the write after it arrives as an event.
        assert snapshot["data"] == {"n": 10} and snapshot["revision"] == "a"
        await peer.wait_until(lambda p: len(p.events) >= 1)
        await asyncio.sleep(0.2)
        assert [e["document"]["data"] for e in peer.events] == [{"n": 11}]
        assert reply_ids(peer)[-12:] == [r["id"] for r in replies]
    finally:
        await peer.close()


async def test_many_pipelined_commands_are_all_answered(server: ServerProcess, service: str) -> None:
    """More commands than may run at once: reading pauses, nothing is dropped or reordered."""
    peer = await Peer.connect(ws_url(server, service=service))
    try:
        await peer.ok("open", name="deep", data={"n": 0}, subscribe=False)
        count = 150  # the bucket of the default rate limit holds 200 (config.py)
        commands = [("update", {"doc": "deep", "data": {f"k{i}": i}}) for i in range(count)]
        replies = await send_all(peer, commands)
        assert all(r["ok"] for r in replies)
        assert [r["document"]["revision"] for r in replies] == [format(i + 1, "x") for i in range(count)]
        assert len((await peer.ok("fetch", doc="deep"))["document"]["data"]) == count + 1
    finally:
        await peer.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[RedisProcess, ServerProcess]]:
    """A server on a Redis of its own that has never seen a script or a service."""
    redis = start_redis(tmp_path / "redis", persistent=True)
    [server] = start_servers(tmp_path, redis.url, count=1)
    yield redis, server
    stop_servers([server])
    redis.kill()


async def pipelined_writes_in_order(peer: Peer, name: str, count: int = 60) -> None:
    await peer.ok("open", name=name, subscribe=False)
    sets = [("set", {"doc": name, "data": {"n": i}}) for i in range(count)]
    replies = await send_all(peer, sets)
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
    revisions = [int(r["document"]["revision"], 16) for r in replies]
    assert revisions == list(range(revisions[0], revisions[0] + count))
    assert (await peer.ok("fetch", doc=name))["document"]["data"] == {"n": count - 1}


async def test_pipelined_writes_keep_their_order_on_a_new_redis_and_after_a_restart(
    fresh: tuple[RedisProcess, ServerProcess],
) -> None:
    """An empty script cache (a new Redis, or one restarted) must not let a write that is repeated
    as EVAL be overtaken by the ones behind it: the store loads its scripts on connecting."""
    redis, server = fresh
    url = ws_url(server, service="default")
    peer = await Peer.connect(url)
    try:
        await pipelined_writes_in_order(peer, "first-ever")
    finally:
        await peer.close()
    redis.restart(kill=True)  # the data survives (AOF), the script cache does not
    async with Redis.from_url(redis.url) as direct:
        assert await direct.script_exists(*[script.sha for script in load_scripts().values()]) == [
            False
        ] * len(load_scripts())
    peer = await Peer.connect(url)
    try:
        await eventually(lambda: _answers(peer))
        await pipelined_writes_in_order(peer, "first-ever")
        await pipelined_writes_in_order(peer, "after-restart")
    finally:
        await peer.close()


async def _answers(peer: Peer) -> bool:
    return bool((await peer.command("fetch", doc="first-ever"))["ok"])


# -- the batched fan-out, in-process --------------------------------------------------------------


class Recording:
    """An outbox that records what reaches the transport: each direct write, and each send."""

    def __init__(self, *, paused: bool = False) -> None:
        self.writes: list[bytes] = []
        self.sent: list[OutFrame] = []
        self.paused = paused

    @property
    def direct(self) -> Recording | None:
        return None if self.paused else self

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def closed(self) -> bool:
        return False

    def pending_bytes(self) -> int:
        return 0

    def send(self, frame: OutFrame) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str = "") -> None:
        raise AssertionError(f"closed with {code}: {reason}")

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def start_task(self, work: Any) -> None:
        raise AssertionError("no task expected")


def updated(revision: int, data: bytes = b'{"a":1}') -> DocumentEvent:
    header = {"e": "updated", "s": "IS" + "1" * 32, "sid": "ET" + "2" * 32, "n": None, "r": revision}
    header.update({"c": 0, "u": 0, "x": 0, "b": "system"})
    return decode_event(orjson.dumps(header) + b"\n" + data)


def removed(revision: int) -> DocumentEvent:
    header = {"e": "removed", "s": "IS" + "1" * 32, "sid": "ET" + "2" * 32, "n": None, "r": revision}
    header.update({"why": "deleted", "b": "system"})
    return decode_event(orjson.dumps(header))


def subscriber(
    outbox: Recording, *, revision: int, pending: bool = False, hub: Hub | None = None
) -> Subscriptions:
    """A connection's subscriptions holding the test document at ``revision``, made without the hub
    or the store (fan_out only reads them; ``hub`` for one that is told a subscription ended)."""
    subs = Subscriptions(
        hub,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Principal.system("IS" + "1" * 32),
        10,
        outbox,
        "native",
        NativeSession.build_event_frame,
        lambda: None,
        lambda sid, name: None,
    )
    sid = "ET" + "2" * 32
    subs._by_sid[sid] = _Subscription(sid, None, "channel", revision, [] if pending else None)
    return subs


def payloads_of(wire: bytes) -> list[dict[str, Any]]:
    """The JSON of each text frame in ``wire`` (unmasked frames under 64 KiB, as the server writes)."""
    found = []
    while wire:
        size = wire[1] & 0x7F
        offset = 2
        if size == 126:
            size, offset = int.from_bytes(wire[2:4], "big"), 4
        payload, wire = wire[offset : offset + size], wire[offset + size :]
        found.append(json.loads(payload))
    return found


def revisions_of(wire: bytes) -> list[int]:
    return [int(p["document"]["revision"], 16) for p in payloads_of(wire)]


def test_a_batch_of_updates_is_one_write_per_connection() -> None:
    fresh, behind, paused = Recording(), Recording(), Recording(paused=True)
    holding = Recording()
    connections = [
        subscriber(fresh, revision=2),
        subscriber(behind, revision=4),  # already has 3 and 4
        subscriber(paused, revision=2),
        subscriber(holding, revision=-1, pending=True),  # its snapshot is being read
    ]
    batch = [updated(3), updated(4), updated(5)]
    counted = connections[0]._tally.count
    fan_out(batch, connections)
    assert len(fresh.writes) == 1 and revisions_of(fresh.writes[0]) == [3, 4, 5]
    assert revisions_of(b"".join(behind.writes + [f.wire for f in behind.sent])) == [5]
    # Behind on reading: each frame goes through send(), which queues it against the bound.
    assert not paused.writes and [revisions_of(f.wire) for f in paused.sent] == [[3], [4], [5]]
    assert not holding.writes and not holding.sent
    pending = connections[3]._by_sid["ET" + "2" * 32].pending
    assert pending is not None and [e.revision for e in pending] == [3, 4, 5]
    # Each delivery is counted (in the protocol's tally, flushed to the metrics once per batch).
    assert connections[0]._tally.count - counted == 3 + 1 + 3
    # The frame of each event was built once for all of them.
    assert all(len(event._frames) == 1 for event in batch)


async def test_a_batch_with_a_removal_is_handed_out_in_order(
    stack: tuple[DocumentService, Hub, str],
) -> None:
    outbox = Recording()
    connection = subscriber(outbox, revision=0, hub=stack[1])
    fan_out([updated(1), removed(1), updated(2)], [connection])
    payloads = payloads_of(b"".join(outbox.writes + [f.wire for f in outbox.sent]))
    # The removal ends the subscription: nothing after it is delivered.
    assert [p["event"] for p in payloads] == ["updated", "removed"]
    assert not connection._by_sid


def test_a_big_batch_is_written_in_bounded_pieces() -> None:
    outbox = Recording()
    blob = orjson.dumps({"x": "y" * 15_000})
    batch = [updated(r, blob) for r in range(1, 21)]
    fan_out(batch, [subscriber(outbox, revision=0)])
    assert revisions_of(b"".join(outbox.writes)) == list(range(1, 21))
    assert 1 < len(outbox.writes) < 20
    assert all(len(w) <= BATCH_WRITE_BYTES for w in outbox.writes)


@pytest.fixture
async def stack(store: RedisStore) -> AsyncIterator[tuple[DocumentService, Hub, str]]:
    hub = Hub(store.redis, heartbeat_interval=60, fan_out=fan_out)
    await hub.start()
    yield DocumentService(store), hub, store.default_service_sid
    await hub.stop()


async def test_writes_that_reach_redis_together_reach_a_subscriber_in_one_write(
    stack: tuple[DocumentService, Hub, str],
) -> None:
    documents, hub, service = stack
    system = Principal.system(service)
    doc = await documents.create(system, unique_name="together", data={"n": 0}, ttl=0)
    outbox = Recording()
    subs = Subscriptions(
        hub,
        documents,
        system,
        10,
        outbox,
        "native",
        NativeSession.build_event_frame,
        lambda: None,
        lambda sid, name: None,
    )
    await subs.subscribe(doc.sid)
    subs.activate(doc.sid)
    # Five writes begun together leave in one flush, run back to back, and publish back to back.
    await asyncio.gather(*(documents.write(system, doc.sid, data={"n": i}) for i in range(1, 6)))
    await eventually(lambda: sum(len(revisions_of(w)) for w in outbox.writes) >= 5)
    assert [revisions_of(w) for w in outbox.writes] == [[1, 2, 3, 4, 5]]
    await subs.close()


# -- replies that are ready together, in-process --------------------------------------------------


class TaskRecording(Recording):
    """A recording outbox whose tasks run on the loop, as the connection's do."""

    def start_task(self, work: Any) -> None:
        asyncio.get_running_loop().create_task(work)


def reply_frame(n: int) -> OutFrame:
    return out_frame(b'{"id":%d,"ok":true}' % n)


class Gated:
    """A pipelined command's work: its reply, once its gate opens."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.gate = asyncio.Event()

    async def work(self) -> OutFrame:
        await self.gate.wait()
        return reply_frame(self.n)


def bare_session(outbox: Recording) -> Session:
    endpoint = SimpleNamespace(limits=Limits(), documents=None, authenticator=None, hub=None)
    return Session(outbox, endpoint)  # type: ignore[arg-type]


async def test_replies_ready_together_are_one_write_in_command_order() -> None:
    outbox = TaskRecording()
    session = bare_session(outbox)
    commands = [Gated(n) for n in range(5)]
    for command in commands:
        await session.pipeline(command.work())
    commands[0].gate.set()
    await asyncio.sleep(0.01)
    # The first alone: written as soon as it is ready (one frame goes through send).
    assert outbox.sent == [reply_frame(0)] and outbox.writes == []
    for command in reversed(commands[1:]):  # finishing out of order changes nothing
        command.gate.set()
    await session.settle()
    assert outbox.writes == [b"".join(reply_frame(n).wire for n in range(1, 5))]
    assert session._replies is None  # nothing kept once every reply is out


async def test_a_reply_answered_behind_pipelined_ones_keeps_its_turn() -> None:
    outbox = TaskRecording()
    session = bare_session(outbox)
    command = Gated(0)
    await session.pipeline(command.work())
    session.answer(reply_frame(1))  # a ping's pong, say: after the write still running
    assert outbox.sent == [] and outbox.writes == []
    command.gate.set()
    await session.settle()
    assert outbox.writes == [reply_frame(0).wire + reply_frame(1).wire]
    # With nothing in flight, an answer is written before answer() returns.
    session.answer(reply_frame(2))
    assert outbox.sent == [reply_frame(2)]
