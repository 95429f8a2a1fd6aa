"""The pub/sub hub: one Redis subscription per document channel per process, shared by all local
subscribers, released when the last one leaves.

Contract:
- :meth:`Hub.subscribe` returns only once Redis has confirmed the channel subscription, so a
  snapshot read *after* it returns cannot miss a later write: the write's event is already routed
  here. (Events may also arrive for writes older than the snapshot; subscribers drop those by
  revision.) Every failure of the hub reaches the caller as :class:`errors.UnavailableError`
  (20503); a cancelled caller gets its ``CancelledError`` and leaves nothing behind.
- Each Redis message is decoded once into a :class:`DocumentEvent` and handed to every local
  subscriber of its channel by a plain synchronous call, in Redis order (= revision order). A
  subscriber must never block: it writes to a bounded per-connection buffer or closes the
  connection (see gateway/outbox.py).
- If the pub/sub connection to Redis is lost, events may have been missed: every subscriber is told
  through :meth:`Subscriber.on_hub_reset` (connections then close with a reconnect code, and
  clients resubscribe with their last revision and converge), and the hub forgets every channel.
  The next subscribe connects again at once: there is no reconnect loop to wait for.

Failure handling, and why it is shaped like this: the hub speaks RESP itself on one dedicated
connection (an ``asyncio.Protocol``, parsed by hiredis as the store's multiplexed connection is)
rather than through redis-py's ``PubSub``, whose reader and writers share one connection object that
either side may tear down under the other. Here writing SUBSCRIBE/UNSUBSCRIBE is a synchronous
``transport.write`` and replies are dispatched as they are parsed, so no task reads and there is no
half-closed state: the connection is either usable or lost, and losing it resets everything in one
synchronous step. A SUBSCRIBE's confirmation is a future per channel that the hub settles (with a
result, or with ``UnavailableError``), never one that a caller owns: when it fails, exactly its
waiters fail and the channel is forgotten, so the next subscribe sends a fresh SUBSCRIBE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio import Redis

from sync_server import errors, metrics
from sync_server.events import DocumentEvent, decode_event
from sync_server.store import keys
from sync_server.store.multiplex import CONNECT_TIMEOUT, pack_command, params_from_pool, ssl_context

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0
"""How long a subscriber waits for Redis to confirm a SUBSCRIBE before it gets 20503."""
HEARTBEAT_INTERVAL = 10.0
"""A PING goes out this often; a connection that stays silent for as long after one is dropped (a
Redis that hangs, or a network path that died without a reset, would otherwise never be noticed)."""

UNAVAILABLE = "The event stream is unavailable, try again"


class Subscriber(Protocol):
    def on_event(self, event: DocumentEvent) -> None:
        """Called once per event of a subscribed channel. Must not block or raise."""

    def on_hub_reset(self) -> None:
        """Called when events may have been lost (Redis pub/sub connection dropped)."""


@dataclass(eq=False, slots=True)
class _Channel:
    confirmed: asyncio.Future[None]
    """Settled by the hub: Redis confirmed the SUBSCRIBE, or it failed (``UnavailableError``)."""
    subscribers: set[Subscriber] = field(default_factory=set)


def _fail(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(errors.UnavailableError(message))
        future.exception()  # retrieved: nobody may be waiting, which is not worth a log line


class _PubSubConnection(asyncio.Protocol):
    """One Redis connection in subscribe mode. Every reply is a push, handled as soon as it is parsed."""

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._loop = loop
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        """Set by the PONG that ends the handshake (after AUTH, if any)."""
        self.lost = False
        self._aborted = False
        # Per channel, the confirmations of the SUBSCRIBEs sent, oldest first. Redis answers each
        # SUBSCRIBE with one confirmation, in order, so the n-th one belongs to the n-th SUBSCRIBE,
        # also when a channel was given up and subscribed again while one was still on its way.
        self._acks: dict[bytes, collections.deque[asyncio.Future[None]]] = {}
        self._heard = True
        self._heartbeat: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._reader.feed(data)
        while not (self.lost or self._aborted):
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.abort("Redis sent something that is not RESP")
                return
            if reply is False:
                return
            self._on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("Redis closed the connection"))
            self.ready.exception()
        self._hub._connection_lost(self, exc)

    # -- commands out -----------------------------------------------------------------------------

    def send(self, *args: str | bytes) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise errors.UnavailableError(UNAVAILABLE)
        transport.write(pack_command(args))

    def handshake(self, params: dict[str, Any]) -> None:
        """AUTH if configured, then PING: its PONG sets :attr:`ready`. (No SELECT: channels are
        not per database.)"""
        password = params.get("password")
        if password:
            username = params.get("username")
            self.send("AUTH", *((username, password) if username else (password,)))
        self.send("PING")

    def subscribe(self, key: bytes, confirmed: asyncio.Future[None]) -> None:
        self.send("SUBSCRIBE", key)
        self._acks.setdefault(key, collections.deque()).append(confirmed)

    def unsubscribe(self, key: bytes) -> None:
        # Best effort: on a lost connection there is no subscription left to end.
        if not self.lost and self.transport is not None and not self.transport.is_closing():
            self.send("UNSUBSCRIBE", key)

    def start_heartbeat(self, interval: float) -> None:
        self._heartbeat = self._loop.call_later(interval, self._beat, interval)

    def close_quietly(self) -> None:
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    def abort(self, why: str) -> None:
        """Drops the connection at once; what is still buffered is not handled any more, and
        :meth:`connection_lost` (soon, from the loop) resets the hub."""
        if not (self.lost or self._aborted):
            log.warning("dropping the Redis pub/sub connection: %s", why)
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    # -- replies in -------------------------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                self._hub._dispatch(reply[1], reply[2])
                return
            if kind == b"subscribe":
                self._confirm(reply[1])
                return
            if kind == b"unsubscribe":
                return
        if reply == b"PONG" or (isinstance(reply, list) and reply[:1] == [b"pong"]):
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if isinstance(reply, hiredis.ReplyError):
            if self.ready.done():
                self.abort(f"Redis answered {reply}")
                return
            # This connection attempt fails (its subscribers get 20503). LOADING is a Redis that is
            # restarting, normal for a moment; anything else (a wrong password…) is worth a warning.
            if not str(reply).startswith("LOADING"):
                log.warning("Redis refused the pub/sub connection: %s", reply)
            self.ready.set_exception(ConnectionError(f"Redis refused the pub/sub connection: {reply}"))
            self.ready.exception()
            self.close_quietly()
        # Anything else is the OK of AUTH.

    def _confirm(self, key: bytes) -> None:
        pending = self._acks.get(key)
        if not pending:
            return
        confirmed = pending.popleft()
        if not pending:
            del self._acks[key]
        if not confirmed.done():
            confirmed.set_result(None)

    def _beat(self, interval: float) -> None:
        if not self._heard:
            self.abort(f"no answer to a PING within {interval:g} s")
            return
        self._heard = False
        try:
            self.send("PING")
        except errors.UnavailableError:
            return  # already lost: connection_lost resets the hub
        self.start_heartbeat(interval)


class Hub:
    def __init__(
        self,
        redis: Redis,
        *,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        # The same Redis as ``redis`` (address, credentials), on a connection of the hub's own.
        self._params = params_from_pool(redis.connection_pool)
        # rediss:// as for the store's connection (the same URL options, see multiplex.ssl_context).
        self._ssl = ssl_context(self._params)
        self._subscribe_timeout = subscribe_timeout
        self._heartbeat_interval = heartbeat_interval
        self._channels: dict[bytes, _Channel] = {}
        self._connection: _PubSubConnection | None = None
        self._connecting: asyncio.Task[_PubSubConnection] | None = None
        self._stopped = False

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.lost

    async def start(self) -> None:
        """Connects ahead of the first subscribe. A Redis that is down now is not an error: every
        subscribe tries again."""
        try:
            await self._connected()
        except errors.UnavailableError:
            log.warning("Redis pub/sub is unavailable at start; subscribes will retry")

    async def stop(self) -> None:
        self._stopped = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, errors.UnavailableError):
                await connecting
        connection, self._connection = self._connection, None
        channels, self._channels = self._channels, {}
        metrics.HUB_CHANNELS.set(0)
        for entry in channels.values():
            _fail(entry.confirmed, "The server is shutting down")
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
            connection = await self._connected()
            # Another subscriber of the channel may have come first while this one waited.
            entry = self._channels.get(key)
            if entry is None:
                entry = _Channel(asyncio.get_running_loop().create_future())
                connection.subscribe(key, entry.confirmed)
                self._channels[key] = entry
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
        metrics.HUB_CHANNELS.set(len(self._channels))
        _fail(entry.confirmed, reason)
        if self._connection is not None:
            # Also after a SUBSCRIBE that timed out: if its confirmation comes after all, Redis
            # must not stay subscribed to a channel nobody here listens to.
            self._connection.unsubscribe(key)

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        entry = self._channels.get(channel)
        if entry is None or not entry.subscribers:
            return
        try:
            event = decode_event(payload)
        except (ValueError, KeyError):
            log.error("dropped an undecodable event on %r", channel)
            return
        # A copy: a subscriber may unsubscribe itself (e.g. on 'removed') while we iterate.
        for subscriber in tuple(entry.subscribers):
            try:
                subscriber.on_event(event)
            except Exception:
                log.exception("subscriber failed on an event")
        metrics.flush_deliveries()  # one inc(n) per protocol for this event (metrics.py)

    # -- the connection ---------------------------------------------------------------------------

    async def _connected(self) -> _PubSubConnection:
        """The live pub/sub connection; connects if there is none, one attempt shared by all callers."""
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        if self._stopped:
            raise errors.UnavailableError("The server is shutting down")
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect(), name="hub-connect")
            self._connecting.add_done_callback(self._connect_done)
        # Shielded: a caller that is cancelled must not cancel the attempt the others wait on.
        return await asyncio.shield(self._connecting)

    def _connect_done(self, task: asyncio.Task[_PubSubConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that waited got it

    async def _connect(self) -> _PubSubConnection:
        loop = asyncio.get_running_loop()
        params = self._params
        timeout = params.get("socket_connect_timeout") or CONNECT_TIMEOUT
        connection: _PubSubConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                if "path" in params:
                    _, connection = await loop.create_unix_connection(
                        lambda: _PubSubConnection(self, loop), params["path"]
                    )
                else:
                    host, port = params.get("host", "localhost"), int(params.get("port", 6379))
                    _, connection = await loop.create_connection(
                        lambda: _PubSubConnection(self, loop),
                        host,
                        port,
                        ssl=self._ssl,
                        server_hostname=host if self._ssl is not None else None,
                    )
                connection.handshake(params)
                await connection.ready
        except (OSError, TimeoutError, errors.UnavailableError) as exc:
            if connection is not None:
                connection.close_quietly()
            raise errors.UnavailableError(UNAVAILABLE) from exc
        if connection.lost:  # lost between its PONG and now
            raise errors.UnavailableError(UNAVAILABLE)
        connection.start_heartbeat(self._heartbeat_interval)
        self._connection = connection
        metrics.HUB_CONNECTS.inc()
        log.info("Redis pub/sub connected")
        return connection

    def _connection_lost(self, connection: _PubSubConnection, exc: Exception | None) -> None:
        """Forgets every channel and tells every subscriber (events may have been missed)."""
        if connection is not self._connection:
            return  # a connection that never became the hub's, or one stop() closed
        self._connection = None
        channels, self._channels = self._channels, {}
        metrics.HUB_CHANNELS.set(0)
        metrics.HUB_RESETS.inc()
        subscribers: set[Subscriber] = set()
        for entry in channels.values():
            _fail(entry.confirmed, "The Redis pub/sub connection was lost")
            subscribers.update(entry.subscribers)
        log.warning(
            "the Redis pub/sub connection was lost (%s); %d channel(s) and %d subscriber(s) reset",
            exc or "closed",
            len(channels),
            len(subscribers),
        )
        for subscriber in subscribers:
            try:
                subscriber.on_hub_reset()
            except Exception:
                log.exception("subscriber failed on a hub reset")
