"""The partitioned layout at the store: a listing walk over many documents in any page size, on the
one-call (standalone) and the per-partition (cluster) paths; a service deletion that is gone at once
and purged in bounded steps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from sync_server import errors
from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore
from tests.support.processes import TEST_ACCOUNT_SID, RedisProcess, start_redis


@pytest.fixture
async def per_partition(redis_proc: RedisProcess) -> AsyncIterator[RedisStore]:
    """A store that makes one call per partition, as on a cluster (SPUBLISH works standalone too)."""
    store = RedisStore(Redis.from_url(redis_proc.url), TEST_ACCOUNT_SID, cluster=True)
    yield store
    await store.close()


async def walk(store: RedisStore, service: str, size: int) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_documents(service, after=after, before=None, size=size)
        assert len(page.items) <= size
        seen += [d.sid for d in page.items]
        if not page.more:
            return seen
        after = page.last_cursor


@pytest.mark.parametrize("size", [50, 7])
@pytest.mark.parametrize("path", ["standalone", "cluster"])
async def test_a_walk_over_a_thousand_documents(
    store: RedisStore, per_partition: RedisStore, size: int, path: str
) -> None:
    chosen = store if path == "standalone" else per_partition
    service = (await store.create_service({})).sid
    who = Principal.system(service)
    created = [
        (await store.create_document(who, f"n{i}" if i % 2 else None, b"{}", 0)).sid for i in range(1000)
    ]
    assert await walk(chosen, service, size) == created
    # And backwards from the end: the last page, then the ones before it.
    page = await chosen.list_documents(service, after=None, before=None, size=1000)
    assert [d.sid for d in page.items] == created and not page.more
    back = await chosen.list_documents(service, after=None, before=page.last_cursor, size=size)
    assert [d.sid for d in back.items] == created[-1 - len(back.items) : -1]


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis no server process sweeps: the purge below must be this store's own, step by step."""
    proc = start_redis(tmp_path_factory.mktemp("layout-redis"))
    yield proc
    proc.stop()


async def test_a_deleted_service_is_gone_at_once_and_purged_in_bounded_steps(own_redis: RedisProcess) -> None:
    store = RedisStore(Redis.from_url(own_redis.url), TEST_ACCOUNT_SID)
    redis = Redis.from_url(own_redis.url)
    try:
        await _delete_and_purge(store, redis)
    finally:
        await redis.aclose()
        await store.close()


async def _delete_and_purge(store: RedisStore, redis: Redis) -> None:
    service = (await store.create_service({})).sid
    who = Principal.system(service)
    docs = [await store.create_document(who, f"d{i}", b"{}", 3600 if i % 3 else 0) for i in range(2000)]
    pubsub = redis.pubsub()
    await pubsub.psubscribe("sync:*:c:ET*")
    confirmation = await pubsub.get_message(timeout=2.0)
    assert confirmation is not None and confirmation["type"] == "psubscribe"
    await store.delete_service(service)
    for doc in docs[:20]:
        with pytest.raises(errors.ServiceNotFound):
            await store.fetch_document(who, doc.sid)
        with pytest.raises(errors.ServiceNotFound):
            await store.fetch_document(who, doc.unique_name or "")
    store.purge_step = 5
    sweeps = 0
    purged = 0
    while await store.purging():
        await store.sweep_expired()
        # No call purged more than its step: 64 partitions, 5 each at most.
        assert store.last_purged <= keys.PARTITIONS * 5
        purged += store.last_purged
        sweeps += 1
    assert purged == 2000
    assert sweeps >= 2000 // (keys.PARTITIONS * 5)
    removed: list[str] = []
    while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
        event = json.loads(message["data"])
        if event["s"] == service:
            assert event["why"] == "service_deleted"
            removed.append(event["sid"])
    await pubsub.aclose()
    assert sorted(removed) == sorted(d.sid for d in docs)
    assert await redis.keys(f"*{service}*") == []


async def test_a_document_deleted_while_its_page_is_read_is_left_out_and_the_walk_goes_on(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page is read in two steps (index entries, then the page's documents): a document deleted
    in between is missing from its page, and every other one is still listed exactly once."""
    service = (await store.create_service({})).sid
    who = Principal.system(service)
    sids = [(await store.create_document(who, f"d{n:03d}", b'{"n":%d}' % n, 0)).sid for n in range(120)]
    victim = sids[10]
    original = store._list_round
    deleted = False

    async def then_delete(*args: Any, **kwargs: Any) -> Any:
        nonlocal deleted
        found = await original(*args, **kwargs)
        if not deleted:
            deleted = True
            await store.delete_document(who, victim)
        return found

    monkeypatch.setattr(store, "_list_round", then_delete)
    seen = await walk(store, service, 50)
    assert deleted and victim not in seen
    assert sorted(seen) == sorted(sid for sid in sids if sid != victim)
    assert len(seen) == len(set(seen))
