"""The pub/sub hub: one Redis subscription per document channel per process, shared by all local
subscribers, released when the last one leaves.

Contract:
- :meth:`Hub.subscribe` returns only once Redis has confirmed the channel subscription, so a
  snapshot read *after* it returns cannot miss a later write: the write's event is already routed
  here. (Events may also arrive for writes older than the snapshot; subscribers drop those by
  revision.) Every failure of the hub reaches the caller as :class:`errors.UnavailableError`
  (20503); a cancelled caller gets its ``CancelledError`` and leaves nothing behind.
- Each Redis message is decoded once into a :class:`DocumentEvent` and handed to every local
  subscriber of its channel synchronously, in Redis order (= revision order), by the hub's
  :data:`FanOut`, which gets the consecutive events of one channel that one read brought together:
  by default one :meth:`Subscriber.on_event` call each (:func:`call_each`); the gateway's writes
  updates straight into each connection, all of a batch in one write (gateway/subscriptions.py). A subscriber
  must never block: it writes to a bounded per-connection buffer or closes the connection (see
  gateway/outbox.py).
- Whenever events may have been missed on a Redis node, every subscriber of that node's channels is
  told through :meth:`Subscriber.on_hub_reset` (connections then close with a reconnect code, and
  clients resubscribe with their last revision and converge), and the hub forgets those channels. The
  next subscribe connects again at once: there is no reconnect loop to wait for.

Standalone Redis: one pub/sub connection (``SUBSCRIBE``) to the Redis of the store; losing it resets
every subscriber. Redis Cluster (after :meth:`Hub.shard_by`): the scripts ``SPUBLISH`` each event on
the master of its channel's slot, so the hub subscribes to each channel with ``SSUBSCRIBE`` on that
master, found in the store's slot map (:class:`~sync_server.store.cluster_client.Topology`), with one
pub/sub connection per master that serves subscribed channels. What resets whom there:

- a node's connection lost, dropped after an error reply (``MOVED`` to an SSUBSCRIBE: the slot moved
  away), or silent past the heartbeat: the subscribers of that node's channels, and no others;
- Redis ending one channel's subscription by itself (an unsolicited ``sunsubscribe``: its slot moved,
  or its master became a replica in a failover): the subscribers of that channel.

Each of them also re-reads the slot map, and a subscribe waits for that read before it routes a new
channel, so subscribing again goes to the new owner. A reset subscriber is removed from every channel
(on every node) at once: it is done with this hub, which is what lets a connection that subscribed on
several nodes close without unsubscribing (gateway/subscriptions.py).

A SUBSCRIBE's confirmation is a future per channel that the hub settles (with a result, or with
``UnavailableError``), never one that a caller owns: when it fails, exactly its waiters fail and the
channel is forgotten, so the next subscribe sends a fresh SUBSCRIBE. The connection itself (RESP in
subscribe mode, parsed by hiredis as it arrives) is in hub_connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

from sync_server import errors, metrics
from sync_server.events import DocumentEvent, decode_event
from sync_server.hub_connection import UNAVAILABLE, PubSubConnection, open_connection
from sync_server.store import keys
from sync_server.store.cluster_client import Address, Topology
from sync_server.store.multiplex import params_from_pool, ssl_context

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0
"""How long a subscriber waits for Redis to confirm a SUBSCRIBE before it gets 20503."""
HEARTBEAT_INTERVAL = 10.0
"""A PING goes out this often; a connection that stays silent for as long after one is dropped (a
Redis that hangs, or a network path that died without a reset, would otherwise never be noticed)."""
MAP_WAIT = 1.0
"""How long a subscribe waits for a slot-map read under way before it routes with the map it has."""

__all__ = [
    "HEARTBEAT_INTERVAL",
    "SUBSCRIBE_TIMEOUT",
    "UNAVAILABLE",
    "FanOut",
    "Hub",
    "Subscriber",
    "call_each",
]


class Subscriber(Protocol):
    def on_event(self, event: DocumentEvent) -> None:
        """Called once per event of a subscribed channel. Must not block or raise."""

    def on_hub_reset(self) -> None:
        """Called once when events may have been lost on a channel of this subscriber (its Redis
        pub/sub connection dropped, or Redis ended the subscription). The hub has then removed the
        subscriber from every channel: it gets no more events, and need not unsubscribe."""


FanOut = Callable[[Sequence[DocumentEvent], Sequence[Subscriber]], None]
"""Hands events of one channel, in order, to each of its subscribers (a snapshot: a subscriber may
leave meanwhile, and then gets no more of them). It must not block or raise, and one subscriber's
failure must not keep the events from the others."""


def call_each(events: Sequence[DocumentEvent], subscribers: Sequence[Subscriber]) -> None:
    """The default :data:`FanOut`: :meth:`Subscriber.on_event` on each, event by event."""
    for event in events:
        for subscriber in subscribers:
            try:
                subscriber.on_event(event)
            except Exception:
                log.exception("subscriber failed on an event")


@dataclass(eq=False, slots=True)
class _Channel:
    confirmed: asyncio.Future[None]
    """Settled by the hub: Redis confirmed the SUBSCRIBE, or it failed (``UnavailableError``)."""
    node: _Node
    subscribers: set[Subscriber] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _Node:
    """One Redis node's pub/sub: its connection, made on demand (one attempt shared by all callers),
    and the channels subscribed on it."""

    label: str
    """``host:port`` (or the unix socket's path): for logs and the ``node`` label of the metrics."""
    params: dict[str, Any]
    sharded: bool
    tls: ssl.SSLContext | None = field(init=False, default=None)
    connection: PubSubConnection | None = None
    connecting: asyncio.Task[PubSubConnection] | None = None
    channels: dict[bytes, _Channel] = field(default_factory=dict)
    connects: metrics.Value = field(init=False)
    resets: metrics.Value = field(init=False)

    def __post_init__(self) -> None:
        # rediss:// as for the store's connection (the same URL options, see multiplex.ssl_context).
        self.tls = ssl_context(self.params)
        self.connects, self.resets = metrics.hub_node(self.label)

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.lost


def _label(params: dict[str, Any]) -> str:
    if "path" in params:
        return str(params["path"])
    return f"{params.get('host', 'localhost')}:{int(params.get('port', 6379))}"


def _fail(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(errors.UnavailableError(message))
        future.exception()  # retrieved: nobody may be waiting, which is not worth a log line


class Hub:
    def __init__(
        self,
        redis: Redis,
        *,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        fan_out: FanOut = call_each,
    ) -> None:
        # The same Redis as ``redis`` (address, credentials), on a connection of the hub's own.
        params = params_from_pool(redis.connection_pool)
        self._standalone = _Node(_label(params), params, sharded=False)
        self._topology: Topology | None = None
        self._nodes: dict[Address, _Node] = {}
        self._subscribe_timeout = subscribe_timeout
        self._heartbeat_interval = heartbeat_interval
        self._fan_out = fan_out
        self._channels: dict[bytes, _Channel] = {}
        self._map_read: asyncio.Future[None] | None = None
        self._stopped = False

    def shard_by(self, topology: Topology) -> None:
        """Subscribes with ``SSUBSCRIBE`` on the master of each channel's slot from now on: for a
        store on a Redis Cluster whose scripts publish with ``SPUBLISH``. Call before :meth:`start`."""
        self._topology = topology

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def connected(self) -> bool:
        """Whether a pub/sub connection is up (on a cluster: to at least one node)."""
        return any(node.connected for node in self._all_nodes())

    def channels_by_node(self) -> dict[str, int]:
        """How many channels are subscribed on each node (``host:port``) that has any."""
        return {node.label: len(node.channels) for node in self._all_nodes() if node.channels}

    async def start(self) -> None:
        """Connects ahead of the first subscribe (on standalone Redis; a cluster's nodes are connected
        as their channels are subscribed). A Redis that is down now is not an error: every subscribe
        tries again."""
        if self._topology is not None:
            return
        try:
            await self._connected(self._standalone)
        except errors.UnavailableError:
            log.warning("Redis pub/sub is unavailable at start; subscribes will retry")

    async def stop(self) -> None:
        self._stopped = True
        nodes = list(self._all_nodes())
        for node in nodes:
            connecting, node.connecting = node.connecting, None
            if connecting is not None:
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, errors.UnavailableError):
                    await connecting
        channels, self._channels = self._channels, {}
        metrics.HUB_CHANNELS.set(0)
        for entry in channels.values():
            _fail(entry.confirmed, "The server is shutting down")
        for node in nodes:
            connection, node.connection = node.connection, None
            node.channels = {}
            if connection is not None and connection.transport is not None:
                connection.transport.close()

    @staticmethod
    def document_channel(service_sid: str, document_sid: str) -> str:
        """The channel of one document's events: the gateway never builds store names itself."""
        return keys.document_channel(service_sid, document_sid)

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Adds ``subscriber`` to ``channel``; returns once Redis routes the channel's events here.

        Raises :class:`errors.UnavailableError` if Redis cannot be reached or does not confirm in
        time; ``subscriber`` is then not subscribed.
        """
        key = channel.encode()
        entry = self._channels.get(key)
        if entry is None:
            node = self._standalone if self._topology is None else await self._node_of(key)
            connection = await self._connected(node)
            # Another subscriber of the channel may have come first while this one waited.
            entry = self._channels.get(key)
            if entry is None:
                entry = _Channel(asyncio.get_running_loop().create_future(), node)
                connection.subscribe(key, entry.confirmed)
                self._channels[key] = entry
                node.channels[key] = entry
                metrics.HUB_CHANNELS.set(len(self._channels))
        entry.subscribers.add(subscriber)
        if not entry.confirmed.done():
            await self._wait_confirmed(key, entry, subscriber)

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Removes ``subscriber``; the Redis subscription goes with the channel's last local subscriber."""
        key = channel.encode()
        entry = self._channels.get(key)
        if entry is not None:
            self._leave(key, entry, subscriber)

    # -- channels ---------------------------------------------------------------------------------

    async def _wait_confirmed(self, key: bytes, entry: _Channel, subscriber: Subscriber) -> None:
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                # Shielded: one waiter's timeout or cancellation must not settle the others' future.
                await asyncio.shield(entry.confirmed)
        except TimeoutError:
            # The first waiter to give up fails them all: they waited on the same SUBSCRIBE.
            self._forget(key, entry, "Redis did not confirm the subscription in time")
            entry.subscribers.discard(subscriber)
            raise errors.UnavailableError(UNAVAILABLE) from None
        except errors.UnavailableError:
            # The SUBSCRIBE failed or the connection was lost meanwhile; the channel is already gone.
            entry.subscribers.discard(subscriber)
            raise errors.UnavailableError(UNAVAILABLE) from None
        except asyncio.CancelledError:
            self._leave(key, entry, subscriber)
            raise
        if subscriber not in entry.subscribers:
            # Reset meanwhile through a channel of another node (see _reset): it is no subscriber now.
            raise errors.UnavailableError(UNAVAILABLE)

    def _leave(self, key: bytes, entry: _Channel, subscriber: Subscriber) -> None:
        if subscriber not in entry.subscribers:
            return
        entry.subscribers.discard(subscriber)
        if not entry.subscribers:
            self._forget(key, entry, "unsubscribed")

    def _forget(self, key: bytes, entry: _Channel, reason: str) -> None:
        """Drops a channel: its waiters (if any) fail, and Redis is unsubscribed."""
        if self._channels.get(key) is not entry:
            return
        del self._channels[key]
        node = entry.node
        node.channels.pop(key, None)
        metrics.HUB_CHANNELS.set(len(self._channels))
        _fail(entry.confirmed, reason)
        if node.connection is not None:
            # Also after a SUBSCRIBE that timed out: if its confirmation comes after all, Redis
            # must not stay subscribed to a channel nobody here listens to.
            node.connection.unsubscribe(key)

    def on_messages(self, channel: bytes, payloads: list[bytes]) -> None:
        """Events from Redis (hub_connection.Owner): each decoded once, handed to every local
        subscriber of the channel."""
        entry = self._channels.get(channel)
        if entry is None or not entry.subscribers:
            return
        events: list[DocumentEvent] = []
        for payload in payloads:
            try:
                events.append(decode_event(payload))
            except (ValueError, KeyError):
                log.error("dropped an undecodable event on %r", channel)
        if not events:
            return
        # A copy: a subscriber may unsubscribe itself (e.g. on 'removed') while we iterate.
        self._fan_out(events, tuple(entry.subscribers))
        metrics.flush_deliveries()  # one inc(n) per protocol for these events (metrics.py)

    # -- resets -----------------------------------------------------------------------------------

    def on_lost(self, connection: PubSubConnection, exc: Exception | None) -> None:
        """A node's connection is gone: every channel of that node is forgotten and its subscribers
        are reset (hub_connection.Owner)."""
        node = self._node_with(connection)
        if node is None:
            return  # a connection that never became a node's, or one stop() closed
        node.connection = None
        why = f"the Redis pub/sub connection was lost ({exc or 'closed'})"
        if not node.channels:  # nothing was subscribed there: nothing can have been missed
            log.info("%s on %s; it had no channels", why, node.label)
            if node.sharded:
                self._reread_map()
            return
        self._reset(node, dict(node.channels), why)

    def on_dropped(self, connection: PubSubConnection, channels: list[bytes]) -> None:
        """Redis ended these channels' subscriptions by itself: their subscribers are reset."""
        node = self._node_with(connection)
        if node is None:
            return
        # Those unsubscribed here meanwhile (or never subscribed on this connection) are not ours.
        ended = {key: node.channels[key] for key in channels if key in node.channels}
        if ended:
            self._reset(node, ended, "Redis ended sharded subscriptions (their slot moved, or a failover)")

    def _node_with(self, connection: PubSubConnection) -> _Node | None:
        if self._standalone.connection is connection:
            return self._standalone
        for node in self._nodes.values():
            if node.connection is connection:
                return node
        return None

    def _reset(self, node: _Node, channels: dict[bytes, _Channel], why: str) -> None:
        """Forgets ``channels`` (of ``node``), fails their waiters and resets their subscribers, who
        are removed from every other channel too (they are done with this hub, see Subscriber)."""
        subscribers: set[Subscriber] = set()
        for key, entry in channels.items():
            if self._channels.get(key) is entry:
                del self._channels[key]
            node.channels.pop(key, None)
            _fail(entry.confirmed, "The Redis pub/sub subscription was lost")
            subscribers.update(entry.subscribers)
        if subscribers and self._channels:  # only on a cluster: other nodes' channels remain
            for key, entry in list(self._channels.items()):
                if not entry.subscribers.isdisjoint(subscribers):
                    entry.subscribers.difference_update(subscribers)
                    if not entry.subscribers:
                        self._forget(key, entry, "its subscribers were reset")
        metrics.HUB_CHANNELS.set(len(self._channels))
        node.resets.inc()
        if node.sharded:
            self._reread_map()
        log.warning(
            "%s on %s: %d channel(s) and %d subscriber(s) reset",
            why,
            node.label,
            len(channels),
            len(subscribers),
        )
        for subscriber in subscribers:
            try:
                subscriber.on_hub_reset()
            except Exception:
                log.exception("subscriber failed on a hub reset")

    # -- routing (on a cluster) -------------------------------------------------------------------

    async def _node_of(self, key: bytes) -> _Node:
        """The node of the master serving ``key``'s slot, after any map read under way (a reset or a
        failed connect started one: the map it replaces proved wrong)."""
        topology = self._topology
        assert topology is not None
        reading = self._map_read
        if reading is not None and not reading.done():
            with contextlib.suppress(Exception):  # no node answered: route with the map as it is
                await asyncio.wait_for(asyncio.shield(reading), MAP_WAIT)
        address = topology.address_of(key)
        if address is None:  # no map read yet (the store has not run a script): read it now
            try:
                await asyncio.wait_for(topology.refresh(), self._subscribe_timeout)
            except Exception as exc:  # no node answered, or not in time
                raise errors.UnavailableError(UNAVAILABLE) from exc
            address = topology.address_of(key)
            if address is None:
                raise errors.UnavailableError(UNAVAILABLE)
        node = self._nodes.get(address)
        if node is None:
            params = topology.node_params(address)
            node = self._nodes[address] = _Node(_label(params), params, sharded=True)
        return node

    def _reread_map(self) -> None:
        """Starts a read of the slot map (shared with the store's router), unless one is under way."""
        if self._topology is None or self._stopped:
            return
        if self._map_read is None or self._map_read.done():
            self._map_read = asyncio.ensure_future(self._topology.refresh())
            self._map_read.add_done_callback(_retrieve)

    def _all_nodes(self) -> list[_Node]:
        return [self._standalone, *self._nodes.values()]

    # -- connections ------------------------------------------------------------------------------

    async def _connected(self, node: _Node) -> PubSubConnection:
        """The node's live pub/sub connection; connects if there is none, one attempt shared by all."""
        connection = node.connection
        if connection is not None and not connection.lost:
            return connection
        if self._stopped:
            raise errors.UnavailableError("The server is shutting down")
        if node.connecting is None:
            node.connecting = asyncio.create_task(self._connect(node), name=f"hub-connect {node.label}")
            node.connecting.add_done_callback(lambda task: self._connect_done(node, task))
        # Shielded: a caller that is cancelled must not cancel the attempt the others wait on.
        return await asyncio.shield(node.connecting)

    def _connect_done(self, node: _Node, task: asyncio.Task[PubSubConnection]) -> None:
        if node.connecting is task:
            node.connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that waited got it

    async def _connect(self, node: _Node) -> PubSubConnection:
        try:
            connection = await open_connection(
                self, node.params, node.tls, sharded=node.sharded, heartbeat_interval=self._heartbeat_interval
            )
        except errors.UnavailableError:
            if node.sharded:
                self._reread_map()  # a dead master: its replica may be serving the slots already
            raise
        node.connection = connection
        node.connects.inc()
        log.info("Redis pub/sub connected to %s", node.label)
        return connection


def _retrieve(future: asyncio.Future[None]) -> None:
    """Marks a background future's exception as seen (whoever awaits it gets it too)."""
    if not future.cancelled():
        future.exception()
