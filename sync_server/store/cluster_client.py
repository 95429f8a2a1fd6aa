"""The scripts' connection on a Redis Cluster: one multiplexed connection per master and a slot map.

Why not redis-py's ``RedisCluster``: measured with ``bench/cluster_client.py``, it costs about ten times
the client CPU per call of the multiplexed connection, and under resharding it ran some scripts twice.
Here a command goes to the master of its first key's slot (``redis.crc.key_slot``) on that master's
:class:`MultiplexedRedis`, so the hot path costs one CRC16 and one list index more than standalone.

What the cluster may answer, and what :class:`ClusterRouter` does about it:

- ``MOVED slot host:port`` (a failover or a finished slot move): retry at the named node at once, and
  re-read the whole map in the background (one ``CLUSTER SLOTS`` at a time, however many callers saw
  ``MOVED``);
- ``ASK slot host:port`` (a slot half-way through a migration): ``ASKING`` and the command, adjacent on
  the named node's connection (:meth:`MultiplexedRedis.execute_asking`); the map stays as it is;
- ``TRYAGAIN`` (a multi-key script whose keys a migration has split): back off and retry, the map as it
  is; ``CLUSTERDOWN`` and :class:`CannotConnectError` (the master is dead and its replica not yet
  promoted; a failover takes ~4 s): back off, re-read the map and retry. Both until ``retry_deadline``
  seconds have passed since the call's first redirection or failure;
- :class:`ConnectionLostError` and ``TimeoutError`` (the command was in flight): raised, never retried,
  since the write may have happened; the map is re-read for the next caller;
- ``NOSCRIPT`` (a promoted replica's script cache is empty): raised, the caller falls back to EVAL as on
  standalone (scripts.py).

:func:`connect_store` tells a cluster from a standalone Redis (``INFO cluster``) and returns either this
router or a plain :class:`MultiplexedRedis`: both are a :class:`StoreConnection`. The router is also the
:class:`Topology` the hub subscribes by (hub.py): which master serves a channel, and a fresh map read
when a subscription shows the map was wrong.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from sync_server.store.multiplex import (
    DEFAULT_TIMEOUT,
    CannotConnectError,
    MultiplexedRedis,
    params_from_url,
)

SLOTS = 16384
RETRY_DEADLINE = 20.0
"""Seconds a call keeps retrying what is safe to retry: a failover (~4 s measured) fits well within."""
REFRESH_TIMEOUT = 1.0
"""Seconds one node may take to answer ``CLUSTER SLOTS`` before the next is asked."""
MAX_REDIRECTS = 16
"""MOVED/ASK answers followed in one call (a map in flux settles long before)."""
_BACKOFF_FIRST, _BACKOFF_MAX = 0.02, 0.5
_REDIRECTS = ("MOVED", "ASK")
_TRANSIENT = ("TRYAGAIN", "CLUSTERDOWN")
_ROUTING_ERRORS = (*_REDIRECTS, *_TRANSIENT)

Arg = str | int | bytes
Address = tuple[str, int]


class StoreConnection(Protocol):
    """What the store's scripts run on: a :class:`MultiplexedRedis` or a :class:`ClusterRouter`."""

    async def execute(self, *args: Arg) -> Any:
        """A command without keys (on a cluster: to any master)."""

    async def execute_keyed(self, key: str | bytes, *args: Arg) -> Any:
        """A command whose first key is ``key`` (on a cluster: to the master of its slot)."""

    async def aclose(self) -> None: ...


class Topology(Protocol):
    """What the hub's sharded subscriptions need of a cluster (hub.py): which master serves a channel
    now, how to reach a node, and a fresh look at the slot map when the old one proved wrong."""

    def address_of(self, key: str | bytes) -> Address | None:
        """The master that serves ``key``'s slot in the map as last read (None: no map yet)."""

    def node_params(self, address: Address) -> dict[str, Any]:
        """Connection keywords for the node at ``address``: the seed's credentials and TLS options."""

    def refresh(self) -> Awaitable[None]:
        """Re-reads the slot map (one read shared by concurrent callers); raises ``CannotConnectError``
        if no node answered, the map then unchanged."""


class ClusterRouter:
    """Commands to the master of their key's slot, on one :class:`MultiplexedRedis` per node."""

    def __init__(
        self,
        params: dict[str, Any],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry_deadline: float = RETRY_DEADLINE,
        seed: MultiplexedRedis | None = None,
        preload: tuple[str | bytes, ...] = (),
    ) -> None:
        """``params`` as for :class:`MultiplexedRedis`, of any node of the cluster (the others are found
        with ``CLUSTER SLOTS`` and reached with the same credentials and TLS options); ``seed``, an open
        connection to that node, is kept rather than opening a second one."""
        self._base = {k: v for k, v in params.items() if k not in ("host", "port", "path", "db")}
        self._timeout = timeout
        self._preload = preload
        self._retry_deadline = retry_deadline
        self._startup: Address = (str(params.get("host", "localhost")), int(params.get("port", 6379)))
        self._connections: dict[Address, MultiplexedRedis] = {}
        if seed is not None:
            self._connections[self._startup] = seed
        self._by_slot: list[MultiplexedRedis | None] = [None] * SLOTS
        self._refreshing: asyncio.Future[None] | None = None
        self.events: collections.Counter[str] = collections.Counter()
        """What the router handled (``MOVED``, ``ASK``, ``TRYAGAIN``, ``cannot connect``, ``refresh``…),
        for tests and benchmarks."""

    # --- the hot path ----------------------------------------------------------------------------

    async def execute_keyed(self, key: str | bytes, *args: Arg) -> Any:
        slot = key_slot(key if isinstance(key, bytes) else key.encode())
        connection = self._by_slot[slot]
        if connection is None:
            return await self._route(slot, args, None)
        try:
            return await connection.submit(*args)
        except NoScriptError:
            raise
        except ResponseError as exc:
            if not str(exc).startswith(_ROUTING_ERRORS):
                raise
            return await self._route(slot, args, exc, connection)
        except CannotConnectError as exc:
            return await self._route(slot, args, exc, connection)

    async def execute(self, *args: Arg) -> Any:
        return await self.execute_keyed(b"", *args)

    def address_of(self, key: str | bytes) -> Address | None:
        """The node the map sends ``key`` to now (None before the map is read)."""
        connection = self._by_slot[key_slot(key if isinstance(key, bytes) else key.encode())]
        return None if connection is None else connection.address

    def masters(self) -> list[MultiplexedRedis]:
        """The connection of every master the map sends slots to now, once each, in slot order (for
        commands every master must answer: ``INFO``, ``DBSIZE``)."""
        return [c for c in dict.fromkeys(self._by_slot) if c is not None]

    def serves_every_slot(self) -> bool:
        """Whether the map has a master for every slot (false before it is read, or while the cluster
        lacks one: its commands answer ``CLUSTERDOWN`` then)."""
        return None not in self._by_slot

    # --- everything else -------------------------------------------------------------------------

    async def _route(
        self,
        slot: int,
        args: tuple[Arg, ...],
        error: RedisError | None,
        answered_by: MultiplexedRedis | None = None,
    ) -> Any:
        """The slow path: follow redirections and wait out a failover, within ``retry_deadline``.
        ``error`` is what ``answered_by`` (the node the map chose) gave, if it was asked already."""
        give_up = time.monotonic() + self._retry_deadline
        delay = _BACKOFF_FIRST
        redirects = 0
        target = answered_by
        asking = False
        while True:
            if error is not None:
                word, _, rest = str(error).partition(" ")
                self.events[word if isinstance(error, ResponseError) else "cannot connect"] += 1
                if isinstance(error, ResponseError) and word in _REDIRECTS:
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise error
                    target = self._connection(_redirect_address(rest, target))
                    asking = word == "ASK"
                    if not asking:
                        # Callers of this slot go there at once; the rest of the map may be stale too.
                        self._by_slot[slot] = target
                        self._refresh_in_background()
                else:
                    # TRYAGAIN, CLUSTERDOWN, or a node that cannot be reached: wait, ask the cluster again.
                    if time.monotonic() + delay > give_up:
                        raise error
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                    if word != "TRYAGAIN":  # a migration in progress changes no owner: the map holds
                        with contextlib.suppress(RedisError):  # no node answered: keep the map, retry
                            await self.refresh()
                    target, asking = None, False
                error = None
            if target is None:
                target = self._by_slot[slot]
                if target is None:
                    try:
                        await self.refresh()
                    except RedisError as exc:
                        error = exc
                        continue
                    target = self._by_slot[slot]
                    if target is None:
                        error = CannotConnectError(f"No master serves slot {slot}")
                        continue
            try:
                if asking:
                    return await target.execute_asking(*args)
                return await target.execute(*args)
            except NoScriptError:
                raise
            except ResponseError as exc:
                if not str(exc).startswith(_ROUTING_ERRORS):
                    raise
                error = exc
            except CannotConnectError as exc:
                error = exc
                target, asking = None, False
            except RedisError:
                # Lost in flight or timed out: it may have run, so it is not repeated here. The node may
                # be gone for good (failover): the next caller should find the new master.
                self._refresh_in_background()
                raise

    def node_params(self, address: Address) -> dict[str, Any]:
        """Connection keywords for the node at ``address`` (the seed's credentials and TLS options): for
        connections of another kind to the same nodes (the hub's pub/sub)."""
        return {**self._base, "host": address[0], "port": address[1]}

    def _connection(self, address: Address) -> MultiplexedRedis:
        connection = self._connections.get(address)
        if connection is None:
            params = self.node_params(address)
            connection = self._connections[address] = MultiplexedRedis(
                params, timeout=self._timeout, preload=self._preload
            )
        return connection

    def refresh(self) -> asyncio.Future[None]:
        """Re-read the slot map, once however many callers ask at the same time (they share the same
        ``CLUSTER SLOTS``); awaiting it raises ``CannotConnectError`` if no node answered."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._read_slot_map())
            self._refreshing.add_done_callback(_retrieve)
        # Shielded: a cancelled caller must not cancel the refresh the others are waiting for.
        return asyncio.shield(self._refreshing)

    def _refresh_in_background(self) -> None:
        self.refresh().add_done_callback(_retrieve)

    async def _read_slot_map(self) -> None:
        self.events["refresh"] += 1
        known = [a for a, c in self._connections.items() if c in self._by_slot]
        candidates = list(dict.fromkeys([*known, self._startup, *self._connections]))
        last: BaseException | None = None
        for address in candidates:
            try:
                reply = await asyncio.wait_for(
                    self._connection(address).execute("CLUSTER", "SLOTS"), REFRESH_TIMEOUT
                )
            except (RedisError, OSError, TimeoutError) as exc:
                last = exc
                continue
            table: list[MultiplexedRedis | None] = [None] * SLOTS
            for first, final, master, *_replicas in reply:
                host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                owner = self._connection((host if host not in ("", "?") else address[0], int(master[1])))
                table[first : final + 1] = [owner] * (final + 1 - first)
            if None in table and address != candidates[-1]:  # a node's view in flux: ask another
                last = CannotConnectError(f"{address} does not see every slot served")
                continue
            self._by_slot = table
            return
        raise CannotConnectError(f"No cluster node answered CLUSTER SLOTS: {last}")

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for connection in self._connections.values():
            await connection.aclose()


def _redirect_address(rest: str, answered_by: MultiplexedRedis | None) -> Address:
    """The node of ``MOVED``/``ASK`` ``<slot> <host>:<port>`` (an empty host: the node that answered)."""
    host, _, port = rest.split(" ")[1].rpartition(":")
    if not host and answered_by is not None and answered_by.address is not None:
        host = answered_by.address[0]
    return host or "127.0.0.1", int(port)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Marks a background future's exception as seen (it is reported to those who await it)."""
    if not future.cancelled():
        future.exception()


async def is_cluster(connection: MultiplexedRedis) -> bool:
    """Whether the node behind ``connection`` runs in cluster mode: ``INFO cluster``, or ``CLUSTER INFO``
    for a user not allowed INFO (hosted Redis often forbids ``@dangerous`` commands)."""
    try:
        info = await connection.execute("INFO", "cluster")
    except ResponseError:
        try:
            await connection.execute("CLUSTER", "INFO")
        except ResponseError:  # "This instance has cluster support disabled"
            return False
        return True
    return b"cluster_enabled:1" in info


async def connect_store(
    target: str | dict[str, Any],
    *,
    command_timeout: float | None = DEFAULT_TIMEOUT,
    retry_deadline: float = RETRY_DEADLINE,
    preload: tuple[str | bytes, ...] = (),
) -> MultiplexedRedis | ClusterRouter:
    """The scripts' connection to ``target`` (a URL, or :class:`MultiplexedRedis` params): a
    :class:`ClusterRouter` with its slot map read when ``target`` is a node of a cluster, else a plain
    :class:`MultiplexedRedis`; ``command_timeout`` is each command's (see multiplex.py). Raises
    ``CannotConnectError`` (and keeps nothing open) if ``target`` cannot be reached. Every node's
    connection loads the ``preload`` scripts before anything else (see :class:`MultiplexedRedis`)."""
    params = params_from_url(target) if isinstance(target, str) else dict(target)
    node = MultiplexedRedis(params, timeout=command_timeout, preload=preload)
    try:
        clustered = await is_cluster(node)
    except BaseException:
        await node.aclose()
        raise
    if not clustered:
        return node
    router = ClusterRouter(
        params, timeout=command_timeout, retry_deadline=retry_deadline, seed=node, preload=preload
    )
    try:
        await router.refresh()
    except BaseException:
        await router.aclose()
        raise
    return router
