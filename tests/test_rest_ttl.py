"""Document TTLs: date_expires, keeping and clearing the expiry, and what expiry does at once (404,
unlisted, name free) and after a sweep (no index entry left, one ``removed`` event).

Expiry is forced with ``PEXPIRE <doc key> 1`` on the test Redis rather than waited for: it is what
Redis does when the TTL passes, minus the wait. One test waits for a real one-second TTL on the
real server, whose own sweeper must deliver the event.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from sync_server.store import keys
from sync_server.store.redis_store import RedisStore
from tests.support.processes import TEST_ACCOUNT_SID, ServerProcess
from tests.support.rest import documents, expect_error

MAX_TTL = 31_536_000


def parse_date(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


async def create(client: httpx.AsyncClient, service: str, **form: str) -> dict[str, Any]:
    response = await client.post(documents(service), data=form)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def subscribe(redis: Redis, channel: str) -> PubSub:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    # Wait for the confirmation: until Redis has it, an event published now would be missed.
    confirmation = await pubsub.get_message(timeout=2.0)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


async def events(pubsub: PubSub, wait: float, until: int | None = None) -> list[dict[str, Any]]:
    """The events that arrive within ``wait`` seconds, or the first ``until`` of them."""
    found: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + wait
    while (left := deadline - asyncio.get_running_loop().time()) > 0 and len(found) != until:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            found.append(json.loads(message["data"]))
    return found


async def force_expiry(redis: Redis, service: str, sid: str) -> None:
    key = keys.document_key(service, sid)
    assert await redis.pexpire(key, 1)
    for _ in range(1000):  # gone within a millisecond or two
        if not await redis.exists(key):
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"{key} did not expire")


@pytest.mark.parametrize("ttl", [1, 100, MAX_TTL])
async def test_date_expires_reflects_ttl(client: httpx.AsyncClient, service: str, ttl: int) -> None:
    body = await create(client, service, Ttl=str(ttl))
    assert parse_date(body["date_expires"]) - parse_date(body["date_created"]) == timedelta(seconds=ttl)


async def test_ttl_zero_means_none(client: httpx.AsyncClient, service: str, redis: Redis) -> None:
    body = await create(client, service, Ttl="0")
    assert body["date_expires"] is None
    assert await redis.ttl(keys.document_key(service, body["sid"])) == -1


async def test_update_keeps_sets_and_clears_the_expiry(
    client: httpx.AsyncClient, service: str, redis: Redis
) -> None:
    body = await create(client, service, UniqueName="t", Ttl="100")
    url = f"{documents(service)}/{body['sid']}"
    key = keys.document_key(service, body["sid"])
    # An update without Ttl keeps the expiry where it was.
    kept = (await client.post(url, data={"Data": '{"a":1}'})).json()
    assert kept["date_expires"] == body["date_expires"]
    assert 0 < await redis.ttl(key) <= 100
    # A new Ttl moves it.
    moved = (await client.post(url, data={"Ttl": "5000"})).json()
    assert parse_date(moved["date_expires"]) - parse_date(moved["date_updated"]) == timedelta(seconds=5000)
    assert moved["data"] == {"a": 1}
    assert 100 < await redis.ttl(key) <= 5000
    # Ttl=0 removes it: from the document, from Redis, and from the sweeper's index.
    cleared = (await client.post(url, data={"Ttl": "0"})).json()
    assert cleared["date_expires"] is None
    assert (await client.get(url)).json()["date_expires"] is None
    assert await redis.ttl(key) == -1
    expiry = keys.expiry(keys.sid_partition(body["sid"]))
    assert await redis.zscore(expiry, f"{service}:{body['sid']}:t") is None
    # An expiry can be added to a document created without one.
    added = (await client.post(url, data={"Ttl": "60"})).json()
    assert added["date_expires"] is not None
    expires = parse_date(added["date_expires"]).timestamp()
    assert await redis.zscore(expiry, f"{service}:{body['sid']}:t") == expires


async def test_expired_document_is_gone_at_once(
    client: httpx.AsyncClient, service: str, redis: Redis
) -> None:
    doc = await create(client, service, UniqueName="brief", Ttl="3600", Data='{"old":1}')
    other = await create(client, service, UniqueName="stays")
    await force_expiry(redis, service, doc["sid"])
    # No sweep has run (the in-process app has no sweeper): the index entries are still there,
    # and yet the document is gone for every operation.
    assert await redis.zscore(keys.index(keys.sid_partition(doc["sid"]), service), doc["sid"]) is not None
    for ident in (doc["sid"], "brief"):
        url = f"{documents(service)}/{ident}"
        expect_error(await client.get(url), 404, 20404)
        expect_error(await client.post(url, data={"Data": "{}"}), 404, 20404)
        expect_error(await client.post(url, data={"Ttl": "0"}), 404, 20404)
        expect_error(await client.delete(url), 404, 20404)
        expect_error(await client.get(f"{url}/Permissions"), 404, 20404)
    listed = (await client.get(documents(service))).json()["documents"]
    assert [d["sid"] for d in listed] == [other["sid"]]
    # The name is free at once.
    reused = await create(client, service, UniqueName="brief", Data='{"new":1}')
    assert reused["sid"] != doc["sid"]
    assert (await client.get(f"{documents(service)}/brief")).json()["data"] == {"new": 1}


async def test_sweep_leaves_no_index_entry_and_publishes_once(
    client: httpx.AsyncClient, service: str, redis: Redis, store: RedisStore, redis_proc: Any
) -> None:
    doc = await create(client, service, UniqueName="swept", Ttl="3600")
    await client.post(
        f"{documents(service)}/{doc['sid']}/Permissions/alice",
        data={"Read": "true", "Write": "true", "Manage": "true"},
    )
    reused_later = await create(client, service, UniqueName="unrelated", Ttl="3600")
    pubsub = await subscribe(redis, keys.document_channel(service, doc["sid"]))
    try:
        await force_expiry(redis, service, doc["sid"])
        # The name is taken over before the sweep: the sweep must not free the new holder's name.
        taken = await create(client, service, UniqueName="swept")
        other_store = RedisStore(Redis.from_url(redis_proc.url), TEST_ACCOUNT_SID)
        try:
            # Two sweepers at once (as two server processes would); a real server may be a third.
            await asyncio.gather(store.sweep_expired(), other_store.sweep_expired())
        finally:
            await other_store.close()
        received = await events(pubsub, 0.5)
    finally:
        await pubsub.aclose()
    assert received == [
        {"e": "removed", "s": service, "sid": doc["sid"], "n": "swept", "r": None, "why": "expired"}
    ]
    p = keys.sid_partition(doc["sid"])
    assert keys.sid_partition(taken["sid"]) == p  # the same name, the same partition
    assert await redis.zscore(keys.index(p, service), doc["sid"]) is None
    assert await redis.hget(keys.names(p, service), "swept") == taken["sid"].encode()
    assert await redis.zscore(keys.expiry(p), f"{service}:{doc['sid']}:swept") is None
    later = keys.sid_partition(reused_later["sid"])
    assert await redis.zscore(keys.expiry(later), f"{service}:{reused_later['sid']}:unrelated") is not None
    assert not await redis.exists(keys.permission_key(service, doc["sid"]))
    # Sweeping again finds nothing more to do.
    await store.sweep_expired()
    indexed = [await redis.zcard(keys.index(q, service)) for q in range(keys.PARTITIONS)]
    assert sum(indexed) == 2


async def test_sweep_of_a_document_expired_on_time(
    client: httpx.AsyncClient, service: str, redis: Redis, store: RedisStore
) -> None:
    doc = await create(client, service, UniqueName="due", Ttl="3600", Data='{"x":1}')
    await client.post(f"{documents(service)}/{doc['sid']}", data={"Data": '{"x":2}'})
    p = keys.sid_partition(doc["sid"])
    # Expiry as the clock would have it: the index time is due and Redis still has the hash (not
    # evicted yet). The event carries no revision all the same (null after an expiry, as the
    # protocol says): what the hash still held once depended on the millisecond the sweep ran in.
    await redis.zadd(keys.expiry(p), {f"{service}:{doc['sid']}:due": 1})
    pubsub = await subscribe(redis, keys.document_channel(service, doc["sid"]))
    try:
        await store.sweep_expired()
        received = await events(pubsub, 0.3)
    finally:
        await pubsub.aclose()
    assert received == [
        {"e": "removed", "s": service, "sid": doc["sid"], "n": "due", "r": None, "why": "expired"}
    ]
    assert not await redis.exists(keys.document_key(service, doc["sid"]))
    assert await redis.hlen(keys.names(p, service)) == 0


async def test_real_expiry_on_the_real_server(server: ServerProcess, redis: Redis) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth) as http:
        service = (await http.post("/v1/Services")).json()["sid"]
        doc = (await http.post(documents(service), data={"UniqueName": "one-second", "Ttl": "1"})).json()
        pubsub = await subscribe(redis, keys.document_channel(service, doc["sid"]))
        try:
            # EXPIREAT has whole-second precision: at most one second, plus a 0.2 s sweep interval.
            received = await events(pubsub, 2.5, until=1)
            received += await events(pubsub, 0.4)  # and no second event from a later sweep
        finally:
            await pubsub.aclose()
        assert [(e["e"], e["why"], e["sid"]) for e in received] == [("removed", "expired", doc["sid"])]
        expect_error(await http.get(f"{documents(service)}/one-second"), 404, 20404)
        assert (await http.get(documents(service))).json()["documents"] == []
    p = keys.sid_partition(doc["sid"])
    assert await redis.zcard(keys.index(p, service)) == 0
    assert await redis.zscore(keys.expiry(p), f"{service}:{doc['sid']}:one-second") is None
    assert await redis.hlen(keys.names(p, service)) == 0
