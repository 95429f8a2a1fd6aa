"""``sync-server migrate``: re-keys a store written by the first layout (all of a service's keys
under ``{IS…}``) into the partitioned one (keys.py), in place, on standalone Redis.

For every service of the index: the 64 partition copies, then every document of its old ``docs``
index with its hash, remaining TTL (PTTL) and permissions, written into its partition by one
script (lua/migrate_doc.lua) that leaves a document already there untouched, then the old keys of
the service (deleted only once all its documents exist in the new layout). The canonical
``sync:{IS…}:svc`` hash keeps its key. Last, the layout version key, which the server checks at
start. So a run stopped anywhere (a crash, or ``--limit``) is resumed by running it again, and a
run on a migrated store changes nothing.

A document keeps its SID, revision, data, dates, creator, TTL and permissions. Its creation score
is its creation date in µs plus its old creation sequence (mod 10^6) as a tie-break, so listing
keeps the old order. A named document whose name's partition is not its SID's gets an alias entry
in the name's partition (see keys.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server.store import keys
from sync_server.store.redis_store import RedisStore, service_from_hash

log = logging.getLogger("sync_server.store")

DELETE_BATCH = 500


class OldLayoutError(RuntimeError):
    """The store holds data of the first layout: the server must not serve it before a migration."""


@dataclass
class Report:
    services: int = 0
    migrated: int = 0
    skipped: int = 0
    """Documents already in the new layout (a resumed or repeated run)."""
    complete: bool = False


async def needs_migration(store: RedisStore) -> bool:
    """Whether the store holds first-layout data. A store without services is marked current."""
    redis = store.redis
    if await redis.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode():
        return False
    if await redis.zcard(keys.SERVICE_INDEX) == 0:
        await redis.set(keys.LAYOUT, keys.LAYOUT_VERSION)
        return False
    return True


async def check_layout(store: RedisStore) -> None:
    """Raises :class:`OldLayoutError` on a store of the first layout. A Redis that cannot be
    reached is not checked: the server starts and answers 503 until Redis is back, as it always
    has (it is checked again at the next start)."""
    try:
        old = await needs_migration(store)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        log.warning("Redis is unreachable at start: the key layout was not checked")
        return
    if old:
        raise OldLayoutError(
            "The Redis store holds data of the previous key layout: stop every server and run "
            "`sync-server migrate --redis-url <url>` first (see README: Running on Redis Cluster)"
        )


async def migrate(store: RedisStore, limit: int | None = None) -> Report:
    """Migrates up to ``limit`` documents (all without one); ``Report.complete`` says if all are."""
    redis = store.redis
    report = Report()
    services = [sid.decode() for sid in cast("list[bytes]", await redis.zrange(keys.SERVICE_INDEX, 0, -1))]
    for service in services:
        canonical = cast("dict[bytes, bytes]", await redis.hgetall(keys.service_key(service)))
        if not canonical:
            continue  # an index entry of a service whose creation never finished
        report.services += 1
        await store._put_copies(service_from_hash(service, canonical))
        rows = cast(
            "list[tuple[bytes, float]]",
            await redis.zrange(keys.Legacy.docs(service), 0, -1, withscores=True),
        )
        for raw_sid, sequence in rows:
            if limit is not None and report.migrated >= limit:
                return report
            sid = raw_sid.decode()
            if await redis.exists(keys.document_key(service, sid)):
                report.skipped += 1
                continue
            if await _migrate_document(store, redis, service, sid, int(sequence)):
                report.migrated += 1
        await _delete_old(redis, service, [sid.decode() for sid, _ in rows])
    await redis.set(keys.LAYOUT, keys.LAYOUT_VERSION)
    report.complete = True
    return report


async def _migrate_document(store: RedisStore, redis: Redis, service: str, sid: str, sequence: int) -> bool:
    async with redis.pipeline(transaction=True) as pipe:  # one slot, {IS…}: read atomically
        pipe.hgetall(keys.Legacy.document(service, sid))
        pipe.pttl(keys.Legacy.document(service, sid))
        pipe.hgetall(keys.Legacy.permissions(service, sid))
        fields, pttl, permissions = await pipe.execute()
    if not fields or pttl == -2:
        return False  # expired meanwhile
    doc = {k.decode(): v for k, v in cast("dict[bytes, bytes]", fields).items()}
    name = doc.get("n", b"").decode()
    score = int(doc.get("c", b"0")) * 1_000_000 + sequence % 1_000_000
    partition = keys.sid_partition(sid)
    args: list[str | int | bytes] = [keys.prefix(partition), service, store.publish_command, sid]
    args += [doc.get(f, b"") for f in ("n", "d", "r", "c", "u", "x", "b")]
    args += [int(pttl) if int(pttl) > 0 else -1, score]
    for identity, flags in cast("dict[bytes, bytes]", permissions).items():
        args += [identity, flags]
    await store._run("migrate_doc", store._partition_keys(partition, service, sid), args)
    if name and keys.name_partition(service, name) != partition:
        await redis.hset(keys.alias(keys.name_partition(service, name)), f"{service}:{name}", str(partition))
    return True


async def _delete_old(redis: Redis, service: str, sids: list[str]) -> None:
    """The service's first-layout keys; the docs index last, so an interrupted run finds the rest."""
    for start in range(0, len(sids), DELETE_BATCH):
        batch = sids[start : start + DELETE_BATCH]
        await redis.delete(
            *(keys.Legacy.document(service, s) for s in batch),
            *(keys.Legacy.permissions(service, s) for s in batch),
        )
    await redis.delete(keys.Legacy.names(service), keys.Legacy.expiry(service))
    await redis.delete(keys.Legacy.docs(service))


async def migrate_url(url: str, limit: int | None = None) -> Report:
    """Opens the store at ``url`` (any account: the migration creates no default service)."""
    store = RedisStore(Redis.from_url(url), "AC" + "0" * 32)
    try:
        return await migrate(store, limit)
    finally:
        await store.close()


async def check_url(url: str) -> bool:
    store = RedisStore(Redis.from_url(url), "AC" + "0" * 32)
    try:
        return await needs_migration(store)
    finally:
        await store.close()
