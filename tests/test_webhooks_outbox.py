"""The webhook outbox on a real Redis, in-process: what the write scripts append (and when not), the
service settings the scripts read in their slot, the outbox's bound and trimming, and the deliverer
end to end against a real HTTP receiver (isolation between receivers, bounded concurrency, two
deliverers sharing the partitions). Each test has a service of its own on this module's Redis."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from redis.asyncio import Redis

from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore
from sync_server.store.scripts import load_scripts
from sync_server.store.webhook_outbox import RedisOutbox
from sync_server.webhooks.deliverer import Deliverer
from sync_server.webhooks.retry import RetryPolicy
from sync_server.webhooks.sender import Sender
from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, RedisProcess, start_redis
from tests.support.realtime import eventually
from tests.support.webhooks import Receiver, valid_signature


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis of this module's own: no other test's server process delivers from it."""
    proc = start_redis(tmp_path_factory.mktemp("webhook-outbox"))
    yield proc
    proc.stop()


@pytest.fixture
async def store(own_redis: RedisProcess) -> AsyncIterator[RedisStore]:
    s = RedisStore(Redis.from_url(own_redis.url), TEST_ACCOUNT_SID)
    yield s
    await s.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


async def entries_of(store: RedisStore, service: str) -> list[tuple[int, dict[str, str]]]:
    found = []
    for partition in range(keys.PARTITIONS):
        for _, flat in await store.redis.xrange(keys.outbox(partition)):
            fields = {k.decode(): v.decode() for k, v in flat.items()}
            if fields.get("s") == service:
                found.append((partition, fields))
    return found


@contextlib.asynccontextmanager
async def delivering(store: RedisStore, *, concurrency: int = 4) -> AsyncIterator[Deliverer]:
    sender = Sender(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, timeout=5.0, concurrency=concurrency)
    deliverer = Deliverer(RedisOutbox(store), sender, RetryPolicy(0.05, 0.2, 60), lease=1.5)
    deliverer.start()
    try:
        yield deliverer
    finally:
        await deliverer.stop(1.0)
        await deliverer.outbox.aclose()


async def test_a_service_without_webhook_appends_nothing(store: RedisStore) -> None:
    service = (await store.create_service({})).sid
    client = Principal.client("alice", service).on_endpoint("EP1")
    await store.create_document(client, "quiet", b"{}", 0)
    await store.write_document(client, "quiet", data=b'{"a":1}')
    await store.delete_document(Principal.system(service), "quiet")
    assert await entries_of(store, service) == []


async def test_client_changes_always_rest_changes_by_the_gate(store: RedisStore, receiver: Receiver) -> None:
    service = (await store.create_service({"webhook_url": receiver.url("/h")})).sid
    rest = Principal.system(service)
    client = Principal.client("alice", service).on_endpoint("EP1")
    doc = await store.create_document(rest, "gated", b'{"n":0}', 0)  # REST, gate off: nothing
    await store.write_document(client, "gated", data=b'{"n":1}')
    assert [fields for _, fields in await entries_of(store, service)] == [
        {
            "e": "document_updated",
            "s": service,
            "sid": doc.sid,
            "n": "gated",
            "r": "1",
            "w": "alice",
            "ep": "EP1",
            "u": receiver.url("/h"),
            "d": '{"n":1}',
        }
    ]
    (partition, _), *_ = await entries_of(store, service)
    assert partition == keys.sid_partition(doc.sid)  # the document's own partition: its order

    await store.update_service(service, {"webhooks_from_rest_enabled": "1"})
    await store.write_document(rest, "gated", data=None, ttl=60)  # TTL only: no change, no webhook
    await store.write_document(rest, "gated", data=b'{"n":2}')
    await store.delete_document(rest, "gated")
    tail = [fields for _, fields in await entries_of(store, service)][1:]
    assert [(f["e"], f["r"], f["w"], f["ep"], f.get("d")) for f in tail] == [
        ("document_updated", "2", "system", "", '{"n":2}'),
        ("document_removed", "2", "system", "", None),
    ]

    await store.update_service(service, {"webhook_url": ""})
    await store.create_document(client, "after", b"{}", 0)
    assert len(await entries_of(store, service)) == 3


async def test_services_of_an_earlier_version_get_their_webhook_copied_once(
    store: RedisStore, receiver: Receiver
) -> None:
    service = (await store.create_service({"webhook_url": receiver.url("/old")})).sid
    # As a version without webhooks left them: the URL in the canonical hash only.
    for partition in range(keys.PARTITIONS):
        await store.redis.hdel(keys.service_copy(partition, service), "wh", "whr")
    await store.redis.delete(keys.WEBHOOK_COPIES)
    client = Principal.client("bob", service).on_endpoint("EP2")
    await store.create_document(client, "before", b"{}", 0)
    assert await entries_of(store, service) == []
    assert await store.copy_webhook_settings() >= 1
    assert await store.copy_webhook_settings() == 0  # marked done
    await store.create_document(client, "after", b"{}", 0)
    assert [f["n"] for _, f in await entries_of(store, service)] == ["after"]


async def test_the_bound_trims_the_oldest_and_says_how_many(store: RedisStore, receiver: Receiver) -> None:
    """The real doc_write script with a bound of 10 instead of 100,000 (the only change)."""
    service = (await store.create_service({"webhook_url": receiver.url("/b")})).sid
    client = Principal.client("carol", service).on_endpoint("EP3")
    doc = await store.create_document(client, "bounded", b"{}", 0)
    partition = keys.sid_partition(doc.sid)
    stream = keys.outbox(partition)
    await store.redis.delete(stream)
    source = load_scripts()["doc_write"].source
    assert source.count(b"OUTBOX_MAX, OUTBOX_TRIM_TO = 100000, 90000") == 1
    bound = b"OUTBOX_MAX, OUTBOX_TRIM_TO = "
    small = source.replace(bound + b"100000, 90000", bound + b"10, 9")
    script_keys = keys.document_script_keys(partition, service, doc.sid)
    for n in range(12):
        args = [keys.prefix(partition), service, "PUBLISH", "0", "carol", "carol", "EP3"]
        args += [doc.sid, "1", b'{"n":%d}' % n, "set", "", "", 16384]
        reply = await store.redis.eval(small, len(script_keys), *script_keys, *args)  # type: ignore[misc]
        assert reply[0] == b"ok"
    rows = [{k.decode(): v.decode() for k, v in flat.items()} for _, flat in await store.redis.xrange(stream)]
    # The 11th write found 10 entries: one trimmed (to 9), its marker, the write. The 12th found 11:
    # two trimmed, a marker, the write. Every loss is counted in the stream itself.
    assert [row["lost"] for row in rows if "lost" in row] == ["1", "2"]
    assert [orjson.loads(row["d"])["n"] for row in rows if "d" in row] == list(range(3, 12))


async def test_the_trim_never_removes_what_is_not_delivered(store: RedisStore, receiver: Receiver) -> None:
    service = (await store.create_service({"webhook_url": receiver.url("/t")})).sid
    client = Principal.client("dave", service).on_endpoint("EP4")
    doc = await store.create_document(client, "trimmed", b"{}", 0)
    partition = keys.sid_partition(doc.sid)
    stream = keys.outbox(partition)
    await store.redis.delete(stream)
    outbox = RedisOutbox(store, "trimmer")
    await outbox.prepare(partition)
    for n in range(250):
        await store.write_document(client, "trimmed", data=b'{"n":%d}' % n)
    # Nothing read yet: a trim told to go anywhere keeps everything.
    await outbox.trim(partition, "99999999999999-0")
    assert await store.redis.xlen(stream) == 250
    read = await outbox.read([partition], 300, 0.1)
    assert len(read) == 250
    await outbox.ack(partition, [entry.id for entry in read[:200]])
    await outbox.trim(partition, "99999999999999-0")
    # Exactly the 50 still pending stay.
    remaining = [entry_id.decode() for entry_id, _ in await store.redis.xrange(stream)]
    assert remaining == [entry.id for entry in read[200:]]
    assert await outbox.waiting(partition) == 50
    await outbox.aclose()


async def test_delivered_in_order_with_twilios_form(store: RedisStore, receiver: Receiver) -> None:
    url = receiver.url("/in-process")
    service = (await store.create_service({"webhook_url": url})).sid
    client = Principal.client("erin", service).on_endpoint("EP5")
    names = [f"doc{i}" for i in range(8)]

    async def trimmed() -> bool:
        return await entries_of(store, service) == []

    async with delivering(store):
        for name in names:
            await store.create_document(client, name, b'{"v":0}', 0)
        for v in range(1, 6):
            for name in names:
                await store.write_document(client, name, data=b'{"v":%d}' % v)
        await receiver.wait_for(lambda r: len(r.delivered("/in-process")) >= len(names) * 6)
        # Delivered entries are trimmed behind the deliverer.
        await eventually(trimmed, within=10)
    got = receiver.delivered("/in-process")
    assert all(valid_signature(url, r) for r in got)
    for name in names:
        mine = [r.params for r in got if r.params["DocumentUniqueName"] == name]
        assert [p["DocumentRevision"] for p in mine] == [str(v) for v in range(6)]
        assert [orjson.loads(p["DocumentData"])["v"] for p in mine] == list(range(6))
        assert mine[0]["EventType"] == "document_created"


async def test_a_slow_receiver_delays_only_its_own_service(store: RedisStore, receiver: Receiver) -> None:
    receiver.slow("/slow", 1.0)
    slow = (await store.create_service({"webhook_url": receiver.url("/slow")})).sid
    fast = (await store.create_service({"webhook_url": receiver.url("/fast")})).sid
    async with delivering(store, concurrency=3):
        started = time.monotonic()
        for i in range(12):
            await store.create_document(Principal.client("s", slow).on_endpoint("E"), f"s{i}", b"{}", 0)
            await store.create_document(Principal.client("f", fast).on_endpoint("E"), f"f{i}", b"{}", 0)
        await receiver.wait_for(lambda r: len(r.delivered("/fast")) == 12, within=10)
        fast_done = time.monotonic() - started
        assert len(receiver.delivered("/slow")) < 12  # still busy: 12 at 3 at a time take 4 s
        await receiver.wait_for(lambda r: len(r.delivered("/slow")) == 12, within=20)
    assert fast_done < 1.0
    assert receiver.most_at_once["/slow"] == 3  # bounded by the receiver's concurrency


async def test_two_deliverers_share_the_partitions(store: RedisStore, receiver: Receiver) -> None:
    service = (await store.create_service({"webhook_url": receiver.url("/shared")})).sid
    client = Principal.client("frank", service).on_endpoint("EP6")
    async with delivering(store) as one, delivering(store) as two:
        await eventually(lambda: len(one.owned) == len(two.owned) == 32, within=10)
        assert (len(one.owned), len(two.owned)) == (32, 32)
        assert not set(one.owned) & set(two.owned)
        for i in range(40):
            await store.create_document(client, f"shared{i}", b"{}", 0)
        await receiver.wait_for(lambda r: len(r.delivered("/shared")) == 40)
    assert len({r.token for r in receiver.delivered("/shared")}) == 40
