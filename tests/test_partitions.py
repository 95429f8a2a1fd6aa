"""The partitioned key layout: tags that spread evenly over the cluster's slots, partitions that
follow the SID and the unique name, and one service's documents spread over three masters."""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis
from redis.crc import key_slot

from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore

# Three masters splitting the slot space in thirds, as redis-cli --cluster create does.
MASTERS = ((0, 5460), (5461, 10922), (10923, 16383))


def master_of(key: str) -> int:
    slot = key_slot(key.encode())
    return next(i for i, (low, high) in enumerate(MASTERS) if low <= slot <= high)


def test_each_tag_lies_in_its_own_slot_range() -> None:
    assert len(keys.TAGS) == keys.PARTITIONS == 64
    for p, tag in enumerate(keys.TAGS):
        assert p * 256 <= key_slot(("{" + tag + "}").encode()) < (p + 1) * 256, (p, tag)
        # Every key of the partition is in that slot.
        slot = key_slot(keys.expiry(p).encode())
        assert key_slot(keys.service_copy(p, "IS" + "0" * 32).encode()) == slot
        assert key_slot(keys.document_channel("IS" + "0" * 32, f"ET{p:02x}" + "0" * 30).encode()) == slot


def test_a_new_sid_names_the_partition_of_its_name() -> None:
    service = "IS" + "1" * 32
    for n in range(200):
        sid = keys.new_document_sid(service, f"name-{n}")
        assert keys.sid_partition(sid) == keys.name_partition(service, f"name-{n}")
        assert len(sid) == 34 and sid.startswith("ET") and int(sid[2:], 16) >= 0


def test_ten_thousand_documents_spread_over_three_masters() -> None:
    service = "IS" + "2" * 32
    counts: Counter[int] = Counter()
    for n in range(5000):
        counts[master_of(keys.document_key(service, keys.new_document_sid(service, f"doc-{n}")))] += 1
        counts[master_of(keys.document_key(service, keys.new_document_sid(service, None)))] += 1
    mean = 10_000 / 3
    assert sum(counts.values()) == 10_000
    assert all(abs(c - mean) <= 0.2 * mean for c in counts.values()), counts


async def test_real_documents_spread_over_the_partitions(store: RedisStore, redis: Redis) -> None:
    service = (await store.create_service({})).sid
    who = Principal.system(service)
    for n in range(1500):
        await store.create_document(who, f"n{n}", b"{}", 0)
        await store.create_document(who, None, b"{}", 0)
    per_master: Counter[int] = Counter()
    for p in range(keys.PARTITIONS):
        per_master[master_of(keys.index(p, service))] += await redis.zcard(keys.index(p, service))
    mean = 3000 / 3
    assert sum(per_master.values()) == 3000
    assert all(abs(c - mean) <= 0.2 * mean for c in per_master.values()), per_master
