"""The expiry sweep at the store level (lua/expire_sweep.lua), on a Redis of this module's own so
that no real server's sweeper races the counts.

Expiry is simulated two ways: a document whose index time is due (``ZADD`` a past score, the hash
still there, as just after the TTL passed) and a document whose hash vanished before its index
time (``PEXPIRE 1``, as an operator or volatile-* eviction would do).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import SWEEP_AUDIT, RedisStore
from tests.support.processes import TEST_ACCOUNT_SID, RedisProcess, start_redis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path_factory.mktemp("sweep-redis"))
    yield proc
    proc.stop()


@pytest.fixture
async def own_store(own_redis: RedisProcess) -> AsyncIterator[RedisStore]:
    store = RedisStore(Redis.from_url(own_redis.url), TEST_ACCOUNT_SID)
    yield store
    await store.close()


@pytest.fixture
async def raw(own_redis: RedisProcess) -> AsyncIterator[Redis]:
    r = Redis.from_url(own_redis.url)
    yield r
    await r.aclose()


def names_in(service: str, partition: int, count: int, stem: str) -> list[str]:
    """Unique names whose documents all live in ``partition``."""
    found = [f"{stem}{n}" for n in range(100_000) if keys.name_partition(service, f"{stem}{n}") == partition]
    return found[:count]


async def across(raw: Redis, key: Callable[[int], str], method: str = "zrange") -> list[bytes]:
    """The members of one key per partition, all together, sorted."""
    found: list[bytes] = []
    for p in range(keys.PARTITIONS):
        if method == "zrange":
            found += await raw.zrange(key(p), 0, -1)
        else:
            found += await raw.hkeys(key(p))
    return sorted(found)


async def new_service(store: RedisStore) -> str:
    return (await store.create_service({})).sid


async def listen(raw: Redis, service: str) -> Any:
    pubsub = raw.pubsub()
    # Every document channel of every partition (events carry their service: filtered below).
    await pubsub.psubscribe(
        keys.document_channel(service, "ET00x")[: -len("ET00x")].replace(keys.TAGS[0], "*") + "*"
    )
    confirmation = await pubsub.get_message(timeout=2.0)
    assert confirmation is not None and confirmation["type"] == "psubscribe"
    return pubsub


async def drain(pubsub: Any, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Events until none arrives for ``quiet`` seconds."""
    found: list[dict[str, Any]] = []
    while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=quiet)) is not None:
        found.append(json.loads(message["data"]))
    return found


async def test_many_concurrent_sweepers_publish_each_expiry_once(
    own_store: RedisStore, own_redis: RedisProcess, raw: Redis
) -> None:
    service = await new_service(own_store)
    due = [
        await own_store.create_document(Principal.system(service), f"due-{i}", b"{}", 3600) for i in range(10)
    ]
    vanished = [
        await own_store.create_document(Principal.system(service), f"gone-{i}", b"{}", 3600)
        for i in range(10)
    ]
    kept = await own_store.create_document(Principal.system(service), "kept", b"{}", 3600)
    for d in due:
        await raw.zadd(keys.expiry(keys.sid_partition(d.sid)), {f"{service}:{d.sid}:{d.unique_name}": 1})
    for doc in vanished:
        await raw.pexpire(keys.document_key(service, doc.sid), 1)
    await asyncio.sleep(0.01)
    pubsub = await listen(raw, service)
    stores = [RedisStore(Redis.from_url(own_redis.url), TEST_ACCOUNT_SID) for _ in range(5)]
    try:
        counts = await asyncio.gather(*(s.sweep_expired() for s in stores))
        received = await drain(pubsub)
    finally:
        await pubsub.aclose()
        for s in stores:
            await s.close()
    assert sum(counts) == 20
    assert sorted(e["sid"] for e in received) == sorted(d.sid for d in due + vanished)
    assert {e["why"] for e in received} == {"expired"}
    # No revision after an expiry (protocol/README.md), whether Redis still showed the hash or not.
    assert {e["r"] for e in received} == {None}
    assert await across(raw, lambda p: keys.index(p, service)) == [kept.sid.encode()]
    assert await across(raw, lambda p: keys.names(p, service), "hkeys") == [b"kept"]
    mine = [m for m in await across(raw, keys.expiry) if m.startswith(service.encode())]
    assert mine == [f"{service}:{kept.sid}:kept".encode()]


async def test_sweep_limit_leaves_the_rest_for_the_next_sweep(own_store: RedisStore, raw: Redis) -> None:
    service = await new_service(own_store)
    # Five due documents of one partition.
    named = names_in(service, 7, 5, "due-")
    docs = [await own_store.create_document(Principal.system(service), n, b"{}", 3600) for n in named]
    assert {keys.sid_partition(d.sid) for d in docs} == {7}
    await raw.zadd(keys.expiry(7), {f"{service}:{d.sid}:{d.unique_name}": 1 for d in docs})
    assert await own_store.sweep_expired(limit=2) == 2
    assert own_store.more_due
    assert await raw.zcard(keys.index(7, service)) == 3
    assert await own_store.sweep_expired(limit=2) == 2
    assert await own_store.sweep_expired(limit=2) == 1
    assert not own_store.more_due
    assert await own_store.sweep_expired(limit=2) == 0
    assert await raw.zcard(keys.index(7, service)) == 0


async def test_one_sweep_is_one_script_call_bounded_over_all_partitions(
    own_store: RedisStore, raw: Redis
) -> None:
    # Standalone Redis: all 64 partitions in one call, and the limit holds for the call as a whole,
    # so one call never holds Redis for more than `limit` removals however many partitions are due.
    service = await new_service(own_store)
    docs = [
        await own_store.create_document(Principal.system(service), f"all-{i}", b"{}", 3600)
        for i in range(300)
    ]
    partitions = {keys.sid_partition(d.sid) for d in docs}
    assert len(partitions) > 50
    for d in docs:
        await raw.zadd(keys.expiry(keys.sid_partition(d.sid)), {f"{service}:{d.sid}:{d.unique_name}": 1})
    await raw.config_resetstat()
    assert await own_store.sweep_expired(limit=100) == 100
    stats = await raw.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert own_store.more_due
    removed = [100]
    while own_store.more_due:
        removed.append(await own_store.sweep_expired(limit=100))
    assert sum(removed) == 300 and max(removed) == 100
    assert [m for m in await across(raw, keys.expiry) if m.startswith(service.encode())] == []


async def test_vanished_document_in_a_large_index_is_found(own_store: RedisStore, raw: Redis) -> None:
    # More entries than one audit samples: the vanished one is found within a few sweeps.
    service = await new_service(own_store)
    docs = [
        await own_store.create_document(Principal.system(service), n, b"{}", 3600)
        for n in names_in(service, 9, SWEEP_AUDIT + 50, "big-")
    ]
    victim = docs[len(docs) // 2]
    await raw.pexpire(keys.document_key(service, victim.sid), 1)
    await asyncio.sleep(0.01)
    sweeps = 0
    while await raw.zscore(keys.index(9, service), victim.sid) is not None:
        sweeps += 1
        # Each sweep samples SWEEP_AUDIT (10) of the 60 entries, so it misses the victim with odds
        # 5/6: 200 misses in a row have odds below 1e-15 (30, as before, failed one run in ~250).
        assert sweeps <= 200
        await own_store.sweep_expired()
    assert await raw.zcard(keys.index(9, service)) == len(docs) - 1
    mine = [m for m in await raw.zrange(keys.expiry(9), 0, -1) if m.startswith(service.encode())]
    assert len(mine) == len(docs) - 1


async def test_sweep_ignores_documents_without_ttl_and_deleted_services(
    own_store: RedisStore, raw: Redis
) -> None:
    service = await new_service(own_store)
    forever = await own_store.create_document(Principal.system(service), "forever", b'{"a":1}', 0)
    assert await own_store.sweep_expired() == 0
    assert (await own_store.fetch_document(Principal.system(service), "forever")).sid == forever.sid
    doomed = await new_service(own_store)
    await own_store.create_document(Principal.system(doomed), "x", b"{}", 3600)
    await own_store.delete_service(doomed)
    await own_store.sweep_expired()  # purges the deleted service's document
    assert not await own_store.purging()
    # The sweep must not bring back any key of a deleted service.
    assert await raw.keys(f"*{doomed}*") == []
