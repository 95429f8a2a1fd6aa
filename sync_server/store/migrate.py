"""``sync-server migrate``: re-keys a store written by the first layout (all of a service's keys
under ``{IS…}``) into the partitioned one (keys.py), in place.

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

Every command goes through the store's own connection (RedisStore._command, the scripts), so the
migration also runs on a Redis Cluster: each old service's keys share one slot, each document is
written into its partition's slot, and the service index and layout key share ``{services}``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from sync_server import errors
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
    if await store._command(keys.LAYOUT, "GET", keys.LAYOUT) == keys.LAYOUT_VERSION.encode():
        return False
    if await store._command(keys.SERVICE_INDEX, "ZCARD", keys.SERVICE_INDEX) == 0:
        await store._command(keys.LAYOUT, "SET", keys.LAYOUT, keys.LAYOUT_VERSION)
        return False
    return True


async def check_layout(store: RedisStore) -> None:
    """Raises :class:`OldLayoutError` on a store of the first layout. A Redis that cannot be
    reached is not checked: the server starts and answers 503 until Redis is back, as it always
    has (it is checked again at the next start)."""
    try:
        old = await needs_migration(store)
    except (errors.UnavailableError, errors.StoreFull):
        log.warning("Redis is unreachable or refusing at start: the key layout was not checked")
        return
    if old:
        raise OldLayoutError(
            "The Redis store holds data of the previous key layout: stop every server and run "
            "`sync-server migrate --redis-url <url>` first (see README: Running on Redis Cluster)"
        )


async def migrate(store: RedisStore, limit: int | None = None) -> Report:
    """Migrates up to ``limit`` documents (all without one); ``Report.complete`` says if all are."""
    await store.detect_cluster()  # the publish command the scripts are given, one slot per call
    report = Report()
    index = keys.SERVICE_INDEX
    services = [sid.decode() for sid in await store._command(index, "ZRANGE", index, 0, -1)]
    for service in services:
        canonical = await store._service_map(service)
        if not canonical:
            continue  # an index entry of a service whose creation never finished
        report.services += 1
        await store._put_copies(service_from_hash(service, canonical))
        docs = keys.Legacy.docs(service)
        flat = await store._command(docs, "ZRANGE", docs, 0, -1, "WITHSCORES")
        rows = [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        for sid, sequence in rows:
            if limit is not None and report.migrated >= limit:
                return report
            new_key = keys.document_key(service, sid)
            if await store._command(new_key, "EXISTS", new_key):
                report.skipped += 1
                continue
            if await _migrate_document(store, service, sid, sequence):
                report.migrated += 1
        await _delete_old(store, service, [sid for sid, _ in rows])
    await store._command(keys.LAYOUT, "SET", keys.LAYOUT, keys.LAYOUT_VERSION)
    report.complete = True
    return report


async def _migrate_document(store: RedisStore, service: str, sid: str, sequence: int) -> bool:
    document, permissions = keys.Legacy.document(service, sid), keys.Legacy.permissions(service, sid)
    # Three reads sent together (one round trip; one slot, {IS…}). Not a transaction, and none is
    # needed: no server writes meanwhile (they are stopped, and a new one refuses this store), and a
    # document that expires between the reads shows PTTL -2 and is skipped as expired.
    fields, pttl, granted = await asyncio.gather(
        store._command(document, "HGETALL", document),
        store._command(document, "PTTL", document),
        store._command(permissions, "HGETALL", permissions),
    )
    if not fields or pttl == -2:
        return False  # expired meanwhile
    doc = {fields[i].decode(): fields[i + 1] for i in range(0, len(fields), 2)}
    name = doc.get("n", b"").decode()
    score = int(doc.get("c", b"0")) * 1_000_000 + sequence % 1_000_000
    partition = keys.sid_partition(sid)
    args: list[str | int | bytes] = [keys.prefix(partition), service, store.publish_command, sid]
    args += [doc.get(f, b"") for f in ("n", "d", "r", "c", "u", "x", "b")]
    args += [int(pttl) if int(pttl) > 0 else -1, score]
    args += granted  # identity, flags pairs
    await store._run("migrate_doc", keys.document_script_keys(partition, service, sid), args)
    if name and keys.name_partition(service, name) != partition:
        alias = keys.alias(keys.name_partition(service, name))
        await store._command(alias, "HSET", alias, f"{service}:{name}", str(partition))
    return True


async def _delete_old(store: RedisStore, service: str, sids: list[str]) -> None:
    """The service's first-layout keys (one slot: one DEL per batch); the docs index last, so an
    interrupted run finds the rest."""
    for start in range(0, len(sids), DELETE_BATCH):
        batch = sids[start : start + DELETE_BATCH]
        old = [keys.Legacy.document(service, s) for s in batch]
        old += [keys.Legacy.permissions(service, s) for s in batch]
        await store._command(old[0], "DEL", *old)
    names, expiry = keys.Legacy.names(service), keys.Legacy.expiry(service)
    await store._command(names, "DEL", names, expiry)
    await store._command(keys.Legacy.docs(service), "DEL", keys.Legacy.docs(service))


async def migrate_url(url: str, limit: int | None = None) -> Report:
    """Opens the store at ``url`` (a single Redis or any node of a cluster; any account: the
    migration creates no default service)."""
    store = RedisStore(Redis.from_url(url), "AC" + "0" * 32)
    try:
        return await migrate(store, limit)
    finally:
        await store.close()
