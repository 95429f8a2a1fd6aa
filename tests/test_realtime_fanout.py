"""Events on the wire, across real server processes on one Redis: what subscribers receive, in what
order, how removals are announced, and how many Redis subscriptions the fan-out costs.

Subscribers here are raw protocol clients (:class:`Peer`), not the Python client library, so that
nothing between the server and the assertions filters duplicates or reorders frames.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from sync_server.embedded import RedisProcess
from sync_server.store import keys
from tests.support.processes import ServerProcess, start_redis
from tests.support.realtime import (
    BASIC,
    WAIT,
    Peer,
    close_all,
    connect_peers,
    documents_url,
    eventually,
    start_servers,
    stop_servers,
    ws_url,
)


@pytest.fixture(scope="module")
def servers(
    redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    procs = start_servers(tmp_path_factory.mktemp("fanout"), redis_proc.url)
    yield procs
    stop_servers(procs)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as client:
        yield client


def updates(peer: Peer, sid: str) -> list[dict[str, Any]]:
    return [e["document"] for e in peer.events if e["event"] == "updated" and e["document"]["sid"] == sid]


def removals(peer: Peer, sid: str) -> list[dict[str, Any]]:
    return [e for e in peer.events if e["event"] == "removed" and e["sid"] == sid]


async def create(http: httpx.AsyncClient, server: ServerProcess, service: str, **form: str) -> dict[str, Any]:
    response = await http.post(documents_url(server, service), data=form)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_rest_update_reaches_a_subscriber(
    servers: list[ServerProcess], service: str, http: httpx.AsyncClient
) -> None:
    server = servers[0]
    peer = await Peer.connect(ws_url(server, service=service))
    try:
        opened = await peer.ok("open", name="scores", data={"a": 1})
        sid = opened["document"]["sid"]
        assert (opened["created"], opened["document"]["revision"]) == (True, "0")
        for revision, value in (("1", 2), ("2", 3)):
            response = await http.post(
                documents_url(server, service, "scores"), data={"Data": json.dumps({"a": value})}
            )
            assert response.status_code == 200 and response.json()["revision"] == revision
        await peer.wait_until(lambda p: len(updates(p, sid)) == 2)
        first, second = updates(peer, sid)
        assert first == {
            "sid": sid,
            "unique_name": "scores",
            "revision": "1",
            "previous_revision": "0",
            "data": {"a": 2},
            "date_created": opened["document"]["date_created"],
            "date_updated": first["date_updated"],
            "date_expires": None,
            "created_by": "system",
        }
        assert (second["revision"], second["previous_revision"], second["data"]) == ("2", "1", {"a": 3})
    finally:
        await peer.close()


async def test_events_cross_processes_both_ways(servers: list[ServerProcess], service: str) -> None:
    a, b = servers
    on_a, on_b = (
        await Peer.connect(ws_url(a, service=service)),
        await Peer.connect(ws_url(b, service=service)),
    )
    try:
        sid = (await on_a.ok("open", name="shared"))["document"]["sid"]
        await on_b.ok("subscribe", doc="shared")
        await on_b.ok("set", doc=sid, data={"from": "b"})  # written on B: A's subscriber must see it
        await on_a.ok("set", doc=sid, data={"from": "a"})  # and the other way round
        for peer in (on_a, on_b):
            await peer.wait_until(lambda p: len(updates(p, sid)) == 2)
            assert [(d["revision"], d["data"]) for d in updates(peer, sid)] == [
                ("1", {"from": "b"}),
                ("2", {"from": "a"}),
            ]
    finally:
        await close_all([on_a, on_b])


async def test_resubscribe_with_current_revision_is_unchanged(
    servers: list[ServerProcess], service: str
) -> None:
    peer = await Peer.connect(ws_url(servers[0], service=service))
    try:
        await peer.ok("open", name="resume", data={"v": 0}, subscribe=False)
        await peer.ok("set", doc="resume", data={"v": 1})
        unchanged = await peer.ok("subscribe", doc="resume", revision="1")
        assert unchanged["unchanged"] is True and "document" not in unchanged
        await peer.ok("unsubscribe", doc="resume")
        behind = await peer.ok("subscribe", doc="resume", revision="0")
        assert (behind["document"]["revision"], behind["document"]["data"]) == ("1", {"v": 1})
    finally:
        await peer.close()


async def test_revisions_only_increase_while_writes_race_subscribes(
    servers: list[ServerProcess], service: str, http: httpx.AsyncClient
) -> None:
    """20 clients subscribe, spread over two processes, while another task writes as fast as it can:
    each sees its snapshot, then every later revision exactly once, in order, up to the last."""
    writes = 150
    doc = await create(http, servers[1], service, UniqueName="race", Data="{}")
    peers = [
        p
        for pair in zip(*[await connect_peers(ws_url(s, service=service), 10) for s in servers], strict=True)
        for p in pair
    ]

    async def write_all() -> None:
        for i in range(writes):
            response = await http.post(
                documents_url(servers[1], service, doc["sid"]), data={"Data": json.dumps({"i": i})}
            )
            assert response.status_code == 200

    try:
        writer = asyncio.create_task(write_all())
        replies = []
        for peer in peers:
            replies.append(await peer.send_command("subscribe", doc="race"))
            await asyncio.sleep(0.01)
        await writer
        snapshots = [int((await reply)["document"]["revision"], 16) for reply in replies]
        # The subscribes did race the writes: most snapshots are neither the first nor the last revision.
        assert sum(0 < s < writes for s in snapshots) >= 10, snapshots
        final = writes
        for peer in peers:
            await peer.wait_until(lambda p: _revisions(p)[-1:] == [final])
        for peer in peers:
            seen = _revisions(peer)
            assert seen == list(range(seen[0], final + 1)), seen
    finally:
        await close_all(peers)


def _revisions(peer: Peer) -> list[int]:
    """The snapshot revision from the subscribe reply, then those of the events, in arrival order."""
    seen = []
    for frame in peer.frames:
        document = frame.get("document")
        if document is not None:
            seen.append(int(document["revision"], 16))
    return seen


async def test_expiry_removes_once_per_subscriber_on_time_and_cleans_indexes(
    servers: list[ServerProcess], service: str, http: httpx.AsyncClient, redis: Redis
) -> None:
    doc = await create(http, servers[0], service, UniqueName="ephemeral", Ttl="2")
    sid, expires = (
        doc["sid"],
        datetime.strptime(doc["date_expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC),
    )
    peers = [p for s in servers for p in await connect_peers(ws_url(s, service=service), 2)]
    try:
        for peer in peers:
            await peer.ok("subscribe", doc=sid)
        for peer in peers:
            await peer.wait_until(lambda p: bool(removals(p, sid)))
        # Both processes sweep every 0.2 s: give them several more chances to announce it twice.
        await asyncio.sleep(0.8)
        for peer in peers:
            assert removals(peer, sid) == [
                {
                    "event": "removed",
                    "sid": sid,
                    "unique_name": "ephemeral",
                    "revision": None,
                    "reason": "expired",
                }
            ]
            arrived = peer.arrivals[peer.frames.index(removals(peer, sid)[0])]
            assert -0.1 <= arrived - expires.timestamp() <= 1.0, arrived - expires.timestamp()
    finally:
        await close_all(peers)
    p = keys.sid_partition(sid)
    assert await redis.zscore(keys.index(p, service), sid) is None
    assert [
        m
        for m in cast("list[bytes]", await redis.zrange(keys.expiry(p), 0, -1))
        if m.startswith(f"{service}:{sid}".encode())
    ] == []
    assert await redis.hget(keys.names(p, service), "ephemeral") is None
    assert await redis.exists(keys.document_key(service, sid)) == 0


async def test_delete_and_service_deletion_are_announced(
    servers: list[ServerProcess], service: str, http: httpx.AsyncClient
) -> None:
    a, b = servers
    deleted = await create(http, a, service, UniqueName="deleted", Data='{"x":1}')
    kept = await create(http, a, service, UniqueName="kept")
    peers = [await Peer.connect(ws_url(a, service=service)), await Peer.connect(ws_url(b, service=service))]
    try:
        for peer in peers:
            await peer.ok("subscribe", doc="deleted")
            await peer.ok("subscribe", doc="kept")
        assert (await http.delete(documents_url(b, service, "deleted"))).status_code == 204
        assert (await http.delete(f"{b.base_url}/v1/Services/{service}")).status_code == 204
        for peer in peers:
            await peer.wait_until(lambda p: bool(removals(p, kept["sid"])))
            assert removals(peer, deleted["sid"]) == [
                {
                    "event": "removed",
                    "sid": deleted["sid"],
                    "unique_name": "deleted",
                    "revision": "0",
                    "reason": "deleted",
                }
            ]
            assert removals(peer, kept["sid"]) == [
                {
                    "event": "removed",
                    "sid": kept["sid"],
                    "unique_name": "kept",
                    "revision": "0",
                    "reason": "service_deleted",
                }
            ]
    finally:
        await close_all(peers)


# --- one Redis subscription per document per process ------------------------------------------------


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, ServerProcess]]:
    """A Redis of its own, so that its command statistics count only this server's commands."""
    directory = Path(tmp_path_factory.mktemp("counted"))
    redis_process = start_redis(directory / "redis")
    server = ServerProcess(directory / "server", redis_url=redis_process.url).start()
    yield redis_process, server
    stop_servers([server])
    redis_process.stop()


async def _calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    calls: int = stats.get(f"cmdstat_{command}", {}).get("calls", 0)
    return calls


async def test_one_redis_subscribe_per_document_per_process(
    counted: tuple[RedisProcess, ServerProcess],
) -> None:
    redis_process, server = counted
    redis = Redis.from_url(redis_process.url)
    try:
        async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as http:
            service = (await http.post(f"{server.base_url}/v1/Services")).json()["sid"]
            sids = [(await create(http, server, service, UniqueName=name))["sid"] for name in ("one", "two")]
        channels = [keys.document_channel(service, sid) for sid in sids]
        subscribes, unsubscribes = await _calls(redis, "subscribe"), await _calls(redis, "unsubscribe")
        peers = await connect_peers(ws_url(server, service=service), 20)
        try:
            await asyncio.gather(*(peer.ok("subscribe", doc=sids[0]) for peer in peers))
            assert await _calls(redis, "subscribe") == subscribes + 1
            await asyncio.gather(*(peer.ok("subscribe", doc=sids[1]) for peer in peers))
            assert await _calls(redis, "subscribe") == subscribes + 2
            assert dict(await redis.pubsub_numsub(*channels)) == {c.encode(): 1 for c in channels}
        finally:
            await close_all(peers)

        async def released() -> bool:
            return dict(await redis.pubsub_numsub(*channels)) == {c.encode(): 0 for c in channels}

        await eventually(released)
        assert await _calls(redis, "unsubscribe") == unsubscribes + 2
        assert await _calls(redis, "subscribe") == subscribes + 2
    finally:
        await redis.aclose()
