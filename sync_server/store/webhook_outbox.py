"""The webhook outbox on Redis: the implementation of ``webhooks/outbox.py``'s contract.

Keys (see keys.py): per partition the outbox stream ``sync:{T}:wh`` with the consumer group
``webhooks``, the lease ``sync:{T}:wl``, the backlogs ``sync:{T}:wb:S`` with their index
``sync:{T}:wbs``, and the dead letters ``sync:{T}:wd``; the deliverers' membership
``sync:{webhooks}:members``. Every step that changes two of them at once is a script of ``lua/``
(``wh_*.lua``), in one slot; the rest are single commands. Both go through the store's script
connection (multiplexed, routed by slot on a cluster).

Blocking reads never do: they would hold up every command queued behind them. They run on
connections of their own, made with the same options as the store's (TLS included): one for all
partitions on a single Redis (one ``XREADGROUP`` names every held partition's stream), one per
partition on a cluster, to the master of the partition's slot (a read cannot span slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server import errors
from sync_server.store import keys
from sync_server.store.cluster_client import ClusterRouter
from sync_server.store.conditions import condition_of, unreachable
from sync_server.store.multiplex import DEFAULT_TIMEOUT, MultiplexedRedis, params_from_pool
from sync_server.store.redis_store import RedisStore
from sync_server.webhooks.outbox import Claimed, Entry

GROUP = "webhooks"
"""The consumer group (also OUTBOX_GROUP in lua/_prelude.lua)."""
CLAIM_BATCH = 500


def consumer_name() -> str:
    """This process's name in the group: where it runs, and a random part (pids repeat in containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RedisOutbox:
    def __init__(
        self, store: RedisStore, consumer: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        """``timeout``: seconds a command may take beyond a read's blocking time (``SYNC_REDIS_TIMEOUT``)."""
        self._store = store
        self.consumer = consumer or consumer_name()
        self._params = params_from_pool(store.redis.connection_pool)
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._readers: dict[int | None, MultiplexedRedis] = {}
        self._partition_of = {keys.outbox(p).encode(): p for p in range(keys.PARTITIONS)}

    @property
    def multi_key_reads(self) -> bool:
        return not self._store.cluster

    # -- membership and leases -------------------------------------------------------------------

    async def prepare(self, partition: int) -> None:
        stream = keys.outbox(partition)
        try:
            await self._command(stream, "XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
        except errors.UnavailableError as exc:
            if "BUSYGROUP" not in exc.message:  # the group exists: what is wanted
                raise

    async def join(self, ttl: float) -> int:
        return int(await self._run("wh_members", [keys.WEBHOOK_MEMBERS], [self.consumer, "join", _ms(ttl)]))

    async def leave(self) -> None:
        await self._run("wh_members", [keys.WEBHOOK_MEMBERS], [self.consumer, "leave"])

    async def hold(self, partition: int, ttl: float) -> int:
        return int(
            await self._run("wh_lease", [keys.outbox_lease(partition)], [self.consumer, "hold", _ms(ttl)])
        )

    async def release(self, partition: int) -> None:
        await self._run("wh_lease", [keys.outbox_lease(partition)], [self.consumer, "release"])

    # -- the stream ------------------------------------------------------------------------------

    async def read(self, partitions: Sequence[int], count: int, block: float) -> list[Entry]:
        streams = [keys.outbox(p) for p in partitions]
        if self._store.cluster and len(partitions) != 1:
            raise ValueError("on a cluster, one read covers one partition")
        key = None if not self._store.cluster else partitions[0]
        args: list[str | int] = ["XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count]
        args += ["BLOCK", _ms(block), "STREAMS", *streams, *([">"] * len(streams))]
        try:
            reader = await self._reader(key, block)
            reply = await reader.execute(*args)
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
            await self._drop_reader(key)
            raise self._error(exc) from exc
        entries: list[Entry] = []
        for stream, rows in reply or ():
            partition = self._partition_of[stream]
            entries += [_entry(partition, row) for row in rows if row[1] is not None]
        return entries

    async def claim(self, partition: int, min_idle: float, exclude: frozenset[str]) -> Claimed:
        """Without ``exclude`` the entries come with the claim; with it, only ids are claimed
        (``JUSTID``) and the entries of those not excluded are read after."""
        stream = keys.outbox(partition)
        start, found, trimmed, ids = "0-0", [], 0, []
        while True:
            args: list[str | int] = ["XAUTOCLAIM", stream, GROUP, self.consumer, _ms(min_idle), start]
            args += ["COUNT", CLAIM_BATCH, *(["JUSTID"] if exclude else [])]
            reply = await self._command(stream, *args)
            cursor, claimed = reply[0], reply[1]
            trimmed += len(reply[2]) if len(reply) > 2 else 0
            if exclude:
                ids += [i.decode() for i in claimed if i.decode() not in exclude]
            else:
                for row in claimed:
                    if row is None or row[1] is None:  # trimmed (Redis 6.2 answers it so)
                        trimmed += 1
                    else:
                        found.append(_entry(partition, row))
            if cursor in (b"0-0", "0-0"):
                break
            start = cursor.decode()
        if ids:
            rows = await asyncio.gather(*(self._command(stream, "XRANGE", stream, i, i) for i in ids))
            for row in rows:
                if row:
                    found.append(_entry(partition, row[0]))
                else:
                    trimmed += 1
        if not min_idle:
            await self._forget_idle_consumers(stream)
        return Claimed(found, trimmed)

    async def _forget_idle_consumers(self, stream: str) -> None:
        """Deletes the group's other consumers that hold nothing in this stream (processes gone, or
        that gave the partition back), so the group's list does not grow with every restart."""
        for consumer in await self._command(stream, "XINFO", "CONSUMERS", stream, GROUP):
            fields = {consumer[i]: consumer[i + 1] for i in range(0, len(consumer), 2)}
            name = fields.get(b"name", b"").decode()
            if name and name != self.consumer and int(fields.get(b"pending", 0)) == 0:
                await self._command(stream, "XGROUP", "DELCONSUMER", stream, GROUP, name)

    async def ack(self, partition: int, ids: Sequence[str]) -> None:
        stream = keys.outbox(partition)
        await self._command(stream, "XACK", stream, GROUP, *ids)

    async def trim(self, partition: int, unread: str) -> None:
        await self._run("wh_trim", [keys.outbox(partition)], [unread])

    # -- backlogs and dead letters ---------------------------------------------------------------

    async def park(self, partition: int, service_sid: str, entry_id: str, item: bytes) -> int:
        script_keys = [
            keys.outbox_lease(partition),
            keys.outbox(partition),
            keys.outbox_backlog(partition, service_sid),
            keys.outbox_backlogged(partition),
        ]
        return int(await self._run("wh_park", script_keys, [self.consumer, entry_id, item, service_sid]))

    async def backlogged(self, partition: int) -> list[str]:
        key = keys.outbox_backlogged(partition)
        return sorted(sid.decode() for sid in await self._command(key, "SMEMBERS", key))

    async def head(self, partition: int, service_sid: str) -> bytes | None:
        key = keys.outbox_backlog(partition, service_sid)
        item: bytes | None = await self._command(key, "LINDEX", key, 0)
        return item

    async def pop(self, partition: int, service_sid: str, item: bytes, dead: bytes | None) -> int:
        script_keys = [
            keys.outbox_lease(partition),
            keys.outbox_backlog(partition, service_sid),
            keys.outbox_backlogged(partition),
            keys.dead_letters(partition),
        ]
        args: list[str | int | bytes] = [self.consumer, item, service_sid, dead or b""]
        return int(await self._run("wh_pop", script_keys, args))

    async def waiting(self, partition: int) -> int:
        in_stream, in_backlogs = await self._run(
            "wh_size",
            [keys.outbox(partition), keys.outbox_backlogged(partition)],
            [keys.prefix(partition)],
        )
        return int(in_stream) + int(in_backlogs)

    async def dead_letters(self, partition: int) -> list[bytes]:
        key = keys.dead_letters(partition)
        found: list[bytes] = await self._command(key, "LRANGE", key, 0, -1)
        return found

    async def replay(self, partition: int, item: bytes, fields: Mapping[str, str]) -> bool:
        flat = [part for pair in fields.items() for part in pair]
        script_keys = [keys.dead_letters(partition), keys.outbox(partition)]
        return bool(await self._run("wh_dead", script_keys, [item, "replay", *flat]))

    async def purge(self, partition: int, item: bytes) -> bool:
        script_keys = [keys.dead_letters(partition), keys.outbox(partition)]
        return bool(await self._run("wh_dead", script_keys, [item, "purge"]))

    async def aclose(self) -> None:
        for key in list(self._readers):
            await self._drop_reader(key)

    # -- plumbing --------------------------------------------------------------------------------

    async def _reader(self, key: int | None, block: float) -> MultiplexedRedis:
        """The blocking-read connection of ``key`` (None: all partitions; else one partition, on a
        cluster, connected to the master of its slot)."""
        reader = self._readers.get(key)
        if reader is None:
            params = self._params
            if key is not None:
                params = await self._node_params(keys.outbox(key))
            reader = self._readers[key] = MultiplexedRedis(params, timeout=block + self._timeout)
        return reader

    async def _node_params(self, key: str) -> dict[str, Any]:
        router = self._store._scripts.connection
        if not isinstance(router, ClusterRouter):
            return self._params
        address = router.address_of(key)
        if address is None:
            await router.refresh()
            address = router.address_of(key)
        if address is None:
            raise errors.UnavailableError("The data store is unavailable, try again")
        base = {k: v for k, v in self._params.items() if k not in ("host", "port", "path", "db")}
        return {**base, "host": address[0], "port": address[1]}

    async def _drop_reader(self, key: int | None) -> None:
        reader = self._readers.pop(key, None)
        if reader is not None:
            await reader.aclose()
        router = self._store._scripts.connection
        if key is not None and isinstance(router, ClusterRouter):
            with contextlib.suppress(Exception):  # the next read asks again anyway
                await router.refresh()

    async def _run(self, name: str, script_keys: list[str], args: list[str | int | bytes]) -> Any:
        try:
            return await self._store._run(name, script_keys, args)
        except ResponseError as exc:
            raise self._error(exc) from exc

    async def _command(self, key: str, *args: str | int | bytes) -> Any:
        try:
            return await self._store._scripts.command(key, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> errors.SyncError:
        if isinstance(exc, ResponseError):
            condition = condition_of(exc)
            if condition is not None:
                return self._store.conditions.seen(condition)
            return errors.UnavailableError(f"The webhook outbox: {exc}")
        return unreachable(exc)


@contextlib.asynccontextmanager
async def open_outbox(url: str, consumer: str) -> AsyncIterator[RedisOutbox]:
    """The outbox of the store at ``url``, for a command-line tool (nothing here delivers)."""
    # The account only names the default service, which the outbox never touches.
    store = RedisStore(Redis.from_url(url), os.environ.get("SYNC_ACCOUNT_SID", ""))
    outbox = RedisOutbox(store, consumer)
    try:
        await store.detect_cluster()
        yield outbox
    finally:
        await outbox.aclose()
        await store.close()


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _entry(partition: int, row: Sequence[Any]) -> Entry:
    entry_id, flat = row[0], row[1]
    fields = {flat[i].decode(): flat[i + 1].decode(errors="replace") for i in range(0, len(flat), 2)}
    return Entry(partition, entry_id.decode(), fields)
