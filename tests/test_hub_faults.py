"""The hub against a real Redis that fails under it: stopped, killed, restarted mid-SUBSCRIBE.

Each test has a Redis of its own (it is killed or frozen with SIGSTOP), and a hub built on it as the
app builds one. Events are published with PUBLISH straight to Redis, in the scripts' format.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from sync_server import errors
from sync_server.events import DocumentEvent
from sync_server.gateway.subscriptions import fan_out
from sync_server.hub import FanOut, Hub, call_each
from tests.support.processes import RedisProcess, start_redis
from tests.support.realtime import eventually

CHANNEL = "sync:{IStest}:ch:ETtest"


class Recorder:
    """A hub subscriber that keeps what it is told."""

    def __init__(self) -> None:
        self.revisions: list[int | None] = []
        self.resets = 0

    def on_event(self, event: DocumentEvent) -> None:
        self.revisions.append(event.revision)

    def on_hub_reset(self) -> None:
        self.resets += 1


def payload(revision: int) -> bytes:
    header = {"e": "updated", "s": "IStest", "sid": "ETtest", "n": None, "r": revision}
    header.update({"c": 0, "u": 0, "x": 0, "b": "system"})
    return orjson.dumps(header) + b"\n{}"


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    process = start_redis(tmp_path / "redis")
    yield process
    if process.pid is not None:
        os.kill(process.pid, signal.SIGCONT)  # a test that failed while it was stopped
    process.kill()


@pytest.fixture
async def redis(redis_process: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_process.url, socket_connect_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
async def hub(redis: Redis) -> AsyncIterator[Hub]:
    # A short confirmation timeout keeps the frozen-Redis tests fast; no heartbeat gets in the way.
    hub = Hub(redis, subscribe_timeout=0.5, heartbeat_interval=60, fan_out=fan_out)
    await hub.start()
    yield hub
    await hub.stop()


def freeze(process: RedisProcess) -> None:
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)


def thaw(process: RedisProcess) -> None:
    assert process.pid is not None
    os.kill(process.pid, signal.SIGCONT)


async def numsub(redis: Redis, channel: str = CHANNEL) -> int:
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count)


async def test_one_redis_subscription_for_many_local_subscribers(hub: Hub, redis: Redis) -> None:
    recorders = [Recorder() for _ in range(50)]
    await asyncio.gather(*(hub.subscribe(CHANNEL, r) for r in recorders))
    assert hub.channel_count == 1
    assert await numsub(redis) == 1
    await redis.publish(CHANNEL, payload(1))

    async def all_heard() -> bool:
        return all(r.revisions == [1] for r in recorders)

    await eventually(all_heard)
    for recorder in recorders:
        await hub.unsubscribe(CHANNEL, recorder)
    assert hub.channel_count == 0

    async def unsubscribed() -> bool:
        return await numsub(redis) == 0

    await eventually(unsubscribed)


class Failing(Recorder):
    def on_event(self, event: DocumentEvent) -> None:
        super().on_event(event)
        raise RuntimeError("a subscriber's bug")


@pytest.mark.parametrize("spread", [fan_out, call_each], ids=["gateway", "default"])
async def test_a_failing_subscriber_does_not_keep_an_event_from_the_others(
    redis: Redis, spread: FanOut, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub(redis, heartbeat_interval=60, fan_out=spread)
    await hub.start()
    try:
        recorders = [Recorder(), Failing(), Recorder(), Failing(), Recorder()]
        for recorder in recorders:
            await hub.subscribe(CHANNEL, recorder)
        await redis.publish(CHANNEL, payload(1))
        await redis.publish(CHANNEL, payload(2))
        await eventually(lambda: all(r.revisions == [1, 2] for r in recorders))
        assert caplog.text.count("subscriber failed on an event") == 4
    finally:
        await hub.stop()


async def test_a_subscribe_that_times_out_fails_its_waiters_and_leaves_nothing(
    hub: Hub, redis: Redis, redis_process: RedisProcess
) -> None:
    freeze(redis_process)  # the SUBSCRIBE is written, but never confirmed in time
    waiters = [Recorder() for _ in range(40)]
    started = time.monotonic()
    results = await asyncio.gather(*(hub.subscribe(CHANNEL, w) for w in waiters), return_exceptions=True)
    elapsed = time.monotonic() - started
    assert all(isinstance(r, errors.UnavailableError) for r in results), results
    assert {r.code for r in results if isinstance(r, errors.SyncError)} == {20503}
    assert elapsed < 2.0  # one timeout for all of them, not one per waiter
    assert hub.channel_count == 0

    thaw(redis_process)  # the late confirmation arrives; the hub unsubscribed meanwhile
    late = Recorder()
    await hub.subscribe(CHANNEL, late)  # a fresh SUBSCRIBE, confirmed at once
    assert hub.channel_count == 1
    assert await numsub(redis) == 1
    await redis.publish(CHANNEL, payload(7))

    async def heard() -> bool:
        return late.revisions == [7]

    await eventually(heard)
    assert all(w.revisions == [] and w.resets == 0 for w in waiters)


async def test_redis_killed_mid_subscribe_fails_every_waiter_then_subscribes_at_once(
    hub: Hub, redis: Redis, redis_process: RedisProcess
) -> None:
    settled = Recorder()
    await hub.subscribe("sync:{IStest}:ch:ETother", settled)
    freeze(redis_process)
    waiters = [Recorder() for _ in range(40)]
    pending = asyncio.gather(*(hub.subscribe(CHANNEL, w) for w in waiters), return_exceptions=True)
    await asyncio.sleep(0.1)
    redis_process.kill()  # SIGKILL works on a stopped process: the connection resets
    results = await pending
    assert all(isinstance(r, errors.UnavailableError) for r in results), results
    assert hub.channel_count == 0
    assert settled.resets == 1  # told that events may be lost
    assert all(w.resets == 1 for w in waiters)  # they were registered too

    # Down: a subscribe fails at once (no 5 s wait).
    started = time.monotonic()
    with pytest.raises(errors.UnavailableError):
        await hub.subscribe(CHANNEL, Recorder())
    assert time.monotonic() - started < 1.0
    assert hub.channel_count == 0

    await asyncio.to_thread(redis_process.start)
    started = time.monotonic()
    fresh = [Recorder() for _ in range(40)]
    await asyncio.gather(*(hub.subscribe(CHANNEL, r) for r in fresh))
    assert time.monotonic() - started < 1.0
    assert await numsub(redis) == 1
    await redis.publish(CHANNEL, payload(3))

    async def heard() -> bool:
        return all(r.revisions == [3] for r in fresh)

    await eventually(heard)


async def test_a_restart_resets_every_subscriber_and_clears_all_state(
    hub: Hub, redis: Redis, redis_process: RedisProcess
) -> None:
    channels = [f"sync:{{IStest}}:ch:ET{i}" for i in range(20)]
    recorders = {channel: [Recorder() for _ in range(5)] for channel in channels}
    await asyncio.gather(*(hub.subscribe(c, r) for c, group in recorders.items() for r in group))
    assert hub.channel_count == 20
    await asyncio.to_thread(redis_process.restart, kill=False)  # SIGTERM, as a shutdown would

    async def all_reset() -> bool:
        return all(r.resets == 1 for group in recorders.values() for r in group)

    await eventually(all_reset)
    assert hub.channel_count == 0 and not hub.connected
    # A reset subscriber's own unsubscribe is harmless, and nothing stays subscribed.
    await hub.unsubscribe(channels[0], recorders[channels[0]][0])
    again = Recorder()
    await hub.subscribe(channels[0], again)
    assert hub.channel_count == 1 and hub.connected


async def test_a_cancelled_subscriber_propagates_and_leaves_the_others_waiting(
    hub: Hub, redis: Redis, redis_process: RedisProcess
) -> None:
    hub._subscribe_timeout = 5.0  # long enough to thaw Redis before anyone gives up
    freeze(redis_process)
    first, other = Recorder(), Recorder()
    cancelled = asyncio.create_task(hub.subscribe(CHANNEL, first))
    waiting = asyncio.create_task(hub.subscribe(CHANNEL, other))
    await asyncio.sleep(0.1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert hub.channel_count == 1  # ``other`` still waits on the same SUBSCRIBE
    thaw(redis_process)
    await asyncio.wait_for(waiting, 2.0)
    await redis.publish(CHANNEL, payload(2))

    async def heard() -> bool:
        return other.revisions == [2]

    await eventually(heard)
    assert first.revisions == []


async def test_the_last_waiter_cancelled_unsubscribes_redis(
    hub: Hub, redis: Redis, redis_process: RedisProcess
) -> None:
    hub._subscribe_timeout = 5.0
    freeze(redis_process)
    task = asyncio.create_task(hub.subscribe(CHANNEL, Recorder()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.channel_count == 0
    thaw(redis_process)

    async def unsubscribed() -> bool:
        return await numsub(redis) == 0

    await asyncio.sleep(0.1)
    await eventually(unsubscribed)


async def test_a_silent_redis_is_noticed_by_the_heartbeat(redis: Redis, redis_process: RedisProcess) -> None:
    hub = Hub(redis, heartbeat_interval=0.2)
    try:
        recorder = Recorder()
        await hub.subscribe(CHANNEL, recorder)
        freeze(redis_process)  # no reset, no FIN: only the missing PONG tells
        await eventually(lambda: recorder.resets == 1, within=3.0)
        assert hub.channel_count == 0
        thaw(redis_process)
        await hub.subscribe(CHANNEL, recorder)
        assert hub.channel_count == 1
    finally:
        await hub.stop()


async def test_the_hub_authenticates_and_refuses_a_wrong_password_with_20503(tmp_path: Path) -> None:
    process = start_redis(tmp_path / "redis")
    # Set after the start: the start-up check PINGs without a password.
    async with Redis.from_url(process.url) as admin:
        await admin.config_set("requirepass", "s3cret")
    redis = Redis.from_url(f"redis://:s3cret@127.0.0.1:{process.port}/0")
    wrong = Redis.from_url(f"redis://:nope@127.0.0.1:{process.port}/0")
    hub, refused = Hub(redis), Hub(wrong)
    try:
        recorder = Recorder()
        await hub.subscribe(CHANNEL, recorder)
        await redis.publish(CHANNEL, payload(4))
        await eventually(lambda: recorder.revisions == [4])
        with pytest.raises(errors.UnavailableError):
            await refused.subscribe(CHANNEL, Recorder())
        assert refused.channel_count == 0 and not refused.connected
    finally:
        await hub.stop()
        await refused.stop()
        await redis.aclose()
        await wrong.aclose()
        process.kill()


async def test_the_hub_on_a_unix_socket(tmp_path: Path) -> None:
    process = start_redis(tmp_path / "r", unix_socket=True)
    assert process.url.startswith("unix://")
    redis = Redis.from_url(process.url)
    hub = Hub(redis)
    try:
        recorder = Recorder()
        await hub.subscribe(CHANNEL, recorder)
        await redis.publish(CHANNEL, payload(9))
        await eventually(lambda: recorder.revisions == [9])
    finally:
        await hub.stop()
        await redis.aclose()
        process.kill()
