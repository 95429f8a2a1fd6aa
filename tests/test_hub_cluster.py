"""The hub on a real Redis Cluster (3 masters, 3 replicas), sharded: each channel SSUBSCRIBEd on the
master of its slot, one pub/sub connection per master, and resets that reach exactly the subscribers
of the node where events may have been lost: a manual failover (Redis ends the old master's sharded
subscriptions), a slot moved away (only that slot's channels), a MOVED answer to an SSUBSCRIBE sent
on a stale map, a master that stops answering (the heartbeat), and a subscriber reset through one
master while its subscribe waits on another.

The hub is built as the app builds it on a cluster: on the store's slot map (a :class:`ClusterRouter`).
Events are published with SPUBLISH through that router, in the scripts' format.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import AsyncIterator

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from sync_server import errors
from sync_server.events import DocumentEvent
from sync_server.hub import Hub
from sync_server.store import keys
from sync_server.store.cluster_client import ClusterRouter, connect_store
from tests.support.cluster import ClusterNode, ClusterProcesses
from tests.support.realtime import eventually


class Recorder:
    """A hub subscriber that keeps what it is told."""

    def __init__(self) -> None:
        self.revisions: list[int | None] = []
        self.resets = 0

    def on_event(self, event: DocumentEvent) -> None:
        self.revisions.append(event.revision)

    def on_hub_reset(self) -> None:
        self.resets += 1


SERVICE = "IS" + "c1" * 16


def document_in(partition: int) -> str:
    return "ET" + format(partition, "02x") + secrets.token_hex(15)


def channel_in(partition: int) -> str:
    return keys.document_channel(SERVICE, document_in(partition))


def payload(channel: str, revision: int) -> bytes:
    sid = channel.rsplit(":", 1)[1]
    header = {"e": "updated", "s": SERVICE, "sid": sid, "n": None, "r": revision}
    header.update({"c": 0, "u": 0, "x": 0, "b": "system"})
    return orjson.dumps(header) + b"\n{}"


def label(node: ClusterNode) -> str:
    return f"{node.host}:{node.port}"


def resets_of(node: ClusterNode) -> float:
    return REGISTRY.get_sample_value("sync_hub_resets_total", {"node": label(node)}) or 0.0


def partitions_of(cluster: ClusterProcesses, master: ClusterNode) -> list[int]:
    """The partitions whose slot ``master`` serves (about a third of them)."""
    found = [p for p in range(keys.PARTITIONS) if cluster.master_of_key(keys.prefix(p)) is master]
    assert found, f"{master!r} serves no partition"
    return found


def channels_on(cluster: ClusterProcesses, master: ClusterNode, count: int) -> list[str]:
    """``count`` channels that ``master`` serves, of documents in different partitions while there are."""
    partitions = partitions_of(cluster, master)
    return [channel_in(partitions[i % len(partitions)]) for i in range(count)]


def shard_subscribers(node: ClusterNode, channel: str) -> int:
    _, count = node.command("PUBSUB", "SHARDNUMSUB", channel)
    return int(count)


@pytest.fixture
async def router(redis_cluster: ClusterProcesses) -> AsyncIterator[ClusterRouter]:
    connection = await connect_store(redis_cluster.url)
    assert isinstance(connection, ClusterRouter)
    yield connection
    await connection.aclose()


@pytest.fixture
async def hub(router: ClusterRouter, redis_cluster: ClusterProcesses) -> AsyncIterator[Hub]:
    redis = Redis.from_url(redis_cluster.url)
    hub = Hub(redis, subscribe_timeout=2.0, heartbeat_interval=60)
    hub.shard_by(router)
    await hub.start()
    yield hub
    await hub.stop()
    await redis.aclose()


async def publish(router: ClusterRouter, channel: str, revision: int) -> None:
    await router.execute_keyed(channel, "SPUBLISH", channel, payload(channel, revision))


async def test_each_channel_is_subscribed_on_the_master_of_its_slot(
    redis_cluster: ClusterProcesses, router: ClusterRouter, hub: Hub
) -> None:
    channels = [channel_in(p) for p in range(keys.PARTITIONS)]
    recorders = {channel: [Recorder(), Recorder()] for channel in channels}
    await asyncio.gather(*(hub.subscribe(c, r) for c, pair in recorders.items() for r in pair))
    owners = {channel: redis_cluster.master_of_key(channel) for channel in channels}
    expected = collections.Counter(label(owner) for owner in owners.values())
    assert len(expected) == 3  # the 64 partitions lie on every master
    assert hub.channels_by_node() == dict(expected)
    # One sharded subscription per channel, on its master, for both local subscribers.
    assert all(shard_subscribers(owners[c], c) == 1 for c in channels)

    for revision in (1, 2):
        await asyncio.gather(*(publish(router, c, revision) for c in channels))
    await eventually(lambda: all(r.revisions == [1, 2] for pair in recorders.values() for r in pair))

    for channel, pair in recorders.items():
        for recorder in pair:
            await hub.unsubscribe(channel, recorder)
    assert hub.channel_count == 0 and hub.channels_by_node() == {}
    await eventually(lambda: all(shard_subscribers(owners[c], c) == 0 for c in channels))
    assert all(r.resets == 0 for pair in recorders.values() for r in pair)


async def test_a_failover_resets_the_subscribers_of_that_master_only(
    healthy_cluster: ClusterProcesses, router: ClusterRouter, hub: Hub
) -> None:
    masters = healthy_cluster.masters()
    failing, steady = masters[0], masters[1:]
    on_failing = channels_on(healthy_cluster, failing, 4)
    on_steady = [c for master in steady for c in channels_on(healthy_cluster, master, 3)]
    recorders = {channel: Recorder() for channel in on_failing + on_steady}
    await asyncio.gather(*(hub.subscribe(c, r) for c, r in recorders.items()))
    # A subscriber of two masters' channels: reset once, and dropped from the steady one too (its only
    # subscriber, so that channel's sharded subscription ends).
    both, only_for_both = Recorder(), channels_on(healthy_cluster, steady[0], 4)[3]
    await hub.subscribe(on_failing[0], both)
    await hub.subscribe(only_for_both, both)
    counted = resets_of(failing)

    promoted = healthy_cluster.manual_failover(failing)
    await eventually(lambda: all(recorders[c].resets == 1 for c in on_failing) and both.resets == 1)
    assert [recorders[c].resets for c in on_steady] == [0] * len(on_steady)
    assert label(failing) not in hub.channels_by_node()
    assert hub.channel_count == len(on_steady)
    await eventually(lambda: shard_subscribers(steady[0], only_for_both) == 0)
    assert resets_of(failing) > counted
    assert all(resets_of(master) == 0 for master in steady)

    # The steady masters' subscribers hear on, on the same connections.
    await asyncio.gather(*(publish(router, c, 5) for c in on_steady))
    await eventually(lambda: all(recorders[c].revisions == [5] for c in on_steady))

    # Subscribing again reaches the promoted master's shard, which now carries the events.
    again = Recorder()
    await hub.subscribe(on_failing[1], again)
    assert healthy_cluster.master_of_key(on_failing[1]) is promoted
    assert hub.channels_by_node()[label(promoted)] == 1
    await publish(router, on_failing[1], 6)
    await eventually(lambda: again.revisions == [6])
    assert both.revisions == [] and all(recorders[c].revisions == [] for c in on_failing)


async def test_a_slot_moved_away_resets_its_channels_only_and_moved_resets_the_node(
    redis_cluster: ClusterProcesses, router: ClusterRouter, hub: Hub
) -> None:
    # The slots move between the node the map is read from and another master, so that the hub's
    # re-read of the map (which asks that node first) sees each move at once.
    source = redis_cluster.node_by_port(int(redis_cluster.url.rsplit(":", 1)[1]))
    target = next(m for m in redis_cluster.masters() if m is not source)
    moving, staying, stale = channels_on(redis_cluster, source, 3)
    slots = {c: redis_cluster.key_slot(c) for c in (moving, staying, stale)}
    assert len(set(slots.values())) == 3
    elsewhere = channels_on(redis_cluster, target, 1)[0]
    on_moving, on_staying, on_elsewhere = Recorder(), Recorder(), Recorder()
    await hub.subscribe(moving, on_moving)
    await hub.subscribe(staying, on_staying)
    await hub.subscribe(elsewhere, on_elsewhere)
    try:
        await asyncio.to_thread(redis_cluster.migrate_slot, slots[moving], target)
        await eventually(lambda: on_moving.resets == 1)
        assert (on_staying.resets, on_elsewhere.resets) == (0, 0)
        await publish(router, staying, 1)
        await publish(router, elsewhere, 1)
        await eventually(lambda: on_staying.revisions == [1] and on_elsewhere.revisions == [1])

        again = Recorder()
        await hub.subscribe(moving, again)  # routed by the map read after the reset
        assert shard_subscribers(target, moving) == 1
        await publish(router, moving, 2)
        await eventually(lambda: again.revisions == [2])
        await hub.unsubscribe(moving, again)

        # A move nobody here was told of (no channel of that slot was subscribed): the map is stale, the
        # SSUBSCRIBE goes to the old owner and is answered MOVED. Events may have been lost on that
        # connection for all the hub knows: the node's subscribers are reset, and the map is read again.
        await asyncio.to_thread(redis_cluster.migrate_slot, slots[stale], target)
        with pytest.raises(errors.UnavailableError):
            await hub.subscribe(stale, Recorder())
        await eventually(lambda: on_staying.resets == 1)
        assert on_elsewhere.resets == 0
        late = Recorder()
        await hub.subscribe(stale, late)
        assert shard_subscribers(target, stale) == 1
        await publish(router, stale, 3)
        await eventually(lambda: late.revisions == [3])
        await hub.unsubscribe(stale, late)
    finally:
        for slot in (slots[moving], slots[stale]):
            if redis_cluster.master_of_slot(slot) is target:
                await asyncio.to_thread(redis_cluster.migrate_slot, slot, source)


async def test_a_master_that_stops_answering_resets_its_subscribers_only(
    healthy_cluster: ClusterProcesses, router: ClusterRouter
) -> None:
    redis = Redis.from_url(healthy_cluster.url)
    hub = Hub(redis, subscribe_timeout=2.0, heartbeat_interval=0.2)
    hub.shard_by(router)
    hung, steady = healthy_cluster.masters()[1:]
    try:
        on_hung, on_steady = Recorder(), Recorder()
        hung_channel = channels_on(healthy_cluster, hung, 1)[0]
        await hub.subscribe(hung_channel, on_hung)
        await hub.subscribe(channels_on(healthy_cluster, steady, 1)[0], on_steady)
        healthy_cluster.freeze(hung)  # no reset, no FIN: only the missing PONG tells
        try:
            await eventually(lambda: on_hung.resets == 1, within=3.0)
        finally:
            healthy_cluster.thaw(hung)  # well before the node timeout: no failover
        assert on_steady.resets == 0
        assert hub.channels_by_node() == {label(steady): 1}
        await hub.subscribe(hung_channel, on_hung)
        assert hub.channels_by_node() == {label(steady): 1, label(hung): 1}
    finally:
        await hub.stop()
        await redis.aclose()


async def test_a_subscriber_reset_elsewhere_while_its_subscribe_waits_gets_20503(
    healthy_cluster: ClusterProcesses, router: ClusterRouter, hub: Hub
) -> None:
    lost, slow = healthy_cluster.masters()[:2]
    first, waiting = channels_on(healthy_cluster, lost, 1)[0], channels_on(healthy_cluster, slow, 1)[0]
    reset, other = Recorder(), Recorder()
    await hub.subscribe(first, reset)
    await hub.subscribe(channels_on(healthy_cluster, slow, 1)[0], Recorder())  # connects to ``slow``
    healthy_cluster.freeze(slow)  # the SSUBSCRIBEs below stay unanswered until it is thawed
    try:
        both = asyncio.gather(
            hub.subscribe(waiting, reset), hub.subscribe(waiting, other), return_exceptions=True
        )
        await asyncio.sleep(0.1)
        lost.command("CLIENT", "KILL", "TYPE", "pubsub")  # ``reset`` loses its channel on ``lost``
        await eventually(lambda: reset.resets == 1)
    finally:
        healthy_cluster.thaw(slow)
    refused, subscribed = await both
    # The confirmation came for both waiters, but ``reset`` is no subscriber any more: it must not be
    # told it is subscribed. ``other`` is.
    assert isinstance(refused, errors.UnavailableError) and subscribed is None
    assert other.resets == 0
    await publish(router, waiting, 4)
    await eventually(lambda: other.revisions == [4])
    assert reset.revisions == []
