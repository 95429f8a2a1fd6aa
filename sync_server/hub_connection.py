"""One Redis connection in subscribe mode, for the hub (hub.py): ``SUBSCRIBE`` on a standalone Redis,
``SSUBSCRIBE`` on a node of a Redis Cluster (sharded pub/sub, where a channel lives on the master of
its slot).

Why the hub speaks RESP itself rather than through redis-py's ``PubSub``: there, a reader and the
writers share one connection object that either side may tear down under the other. Here writing
(S)SUBSCRIBE/(S)UNSUBSCRIBE is a synchronous ``transport.write``, and replies are handled as hiredis
parses them, so no task reads and there is no half-closed state: the connection is either usable or
lost, and losing it is one synchronous call to its owner.

What Redis sends on such a connection, and what it means here:

- ``message``/``smessage`` *channel* *payload*: an event. The events that one read brings are handed
  to :meth:`Owner.on_messages` as they are parsed, consecutive events of one channel together (a
  busy document's writes arrive several per read: its subscribers then get them in one write each);
- ``subscribe``/``ssubscribe`` *channel* *n*: the confirmation of the oldest (S)SUBSCRIBE of that
  channel still unconfirmed (Redis answers each one, in order);
- ``unsubscribe``/``sunsubscribe`` *channel* *n*: the answer to an (S)UNSUBSCRIBE sent here, or, when
  none is outstanding for the channel, Redis ending the subscription by itself: a cluster node does
  that for every sharded channel of a slot it stops serving (the slot moved, or the node became a
  replica in a failover). Events published meanwhile on the new owner were never seen here, so the
  owner hears of it (:meth:`Owner.on_dropped`);
- ``pong``: the end of the handshake, or an answer to the heartbeat;
- an error: before the handshake ends (a wrong password, ``LOADING``), the connection attempt fails;
  after it (``MOVED`` to an SSUBSCRIBE: the node does not serve that slot any more), the connection is
  dropped, which its owner treats as any lost connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any, Protocol, cast

import hiredis

from sync_server import errors
from sync_server.store.multiplex import CONNECT_TIMEOUT, pack_command

log = logging.getLogger("sync_server.hub")

UNAVAILABLE = "The event stream is unavailable, try again"

_MESSAGES = frozenset((b"message", b"smessage"))
_CONFIRMATIONS = frozenset((b"subscribe", b"ssubscribe"))
_UNSUBSCRIBED = frozenset((b"unsubscribe", b"sunsubscribe"))


class Owner(Protocol):
    """What a :class:`PubSubConnection` tells the hub. Each is called synchronously, from the loop."""

    def on_messages(self, channel: bytes, payloads: list[bytes]) -> None:
        """Consecutive events of one subscribed channel from one read, in Redis order."""

    def on_dropped(self, connection: PubSubConnection, channels: list[bytes]) -> None:
        """Redis ended these channels' subscriptions by itself (their slots are no longer served
        here): the ones that one read brought, after the read's other replies were handled."""

    def on_lost(self, connection: PubSubConnection, exc: Exception | None) -> None:
        """The connection is gone (closed, reset, dropped after an error or a missed heartbeat)."""


class PubSubConnection(asyncio.Protocol):
    """One Redis connection in subscribe mode; every reply is handled as soon as it is parsed."""

    def __init__(self, owner: Owner, loop: asyncio.AbstractEventLoop, *, sharded: bool) -> None:
        self._owner = owner
        # Bound once: the hot path (one call per event) pays no attribute lookup on the owner.
        self._on_messages = owner.on_messages
        self._loop = loop
        self._subscribe = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
        self._unsubscribe = b"SUNSUBSCRIBE" if sharded else b"UNSUBSCRIBE"
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
        # Per channel, the UNSUBSCRIBEs sent and not answered yet: an unsubscribe reply beyond these
        # is Redis ending the subscription by itself.
        self._unsubscribing: collections.Counter[bytes] = collections.Counter()
        self._dropped: list[bytes] = []
        self._heard = True
        self._heartbeat: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._reader.feed(data)
        gets = self._reader.gets
        # The run of events of one channel not handed over yet (handed over before anything else).
        channel = b""
        run: list[bytes] = []
        while not (self.lost or self._aborted):
            try:
                reply = gets()
            except hiredis.ProtocolError:
                self.abort("Redis sent something that is not RESP")
                return
            if reply is False:
                break
            if type(reply) is list and len(reply) == 3 and reply[0] in _MESSAGES:
                if reply[1] != channel:
                    if run:
                        self._on_messages(channel, run)
                        run = []
                    channel = reply[1]
                run.append(reply[2])
                continue
            if run:
                self._on_messages(channel, run)
                channel, run = b"", []
            self._on_reply(reply)
        if run and not (self.lost or self._aborted):
            self._on_messages(channel, run)
        if self._dropped:
            # Told once per read: a failover ends every channel of the node in one burst.
            dropped, self._dropped = self._dropped, []
            if not (self.lost or self._aborted):  # else connection_lost resets them all anyway
                self._owner.on_dropped(self, dropped)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("Redis closed the connection"))
            self.ready.exception()
        self._owner.on_lost(self, exc)

    # -- commands out -----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        transport = self.transport
        return not (self.lost or transport is None or transport.is_closing())

    def send(self, *args: str | bytes) -> None:
        if not self.usable:
            raise errors.UnavailableError(UNAVAILABLE)
        assert self.transport is not None
        self.transport.write(pack_command(args))

    def handshake(self, params: dict[str, Any]) -> None:
        """AUTH if configured, then PING: its PONG sets :attr:`ready`. (No SELECT: channels are
        not per database.)"""
        password = params.get("password")
        if password:
            username = params.get("username")
            self.send("AUTH", *((username, password) if username else (password,)))
        self.send("PING")

    def subscribe(self, key: bytes, confirmed: asyncio.Future[None]) -> None:
        """Sends (S)SUBSCRIBE; ``confirmed`` is settled by Redis's confirmation (the owner settles it
        otherwise). Raises ``UnavailableError`` on a connection that is no longer usable."""
        self.send(self._subscribe, key)
        self._acks.setdefault(key, collections.deque()).append(confirmed)

    def unsubscribe(self, key: bytes) -> None:
        # Best effort: on a lost connection there is no subscription left to end.
        if self.usable:
            self.send(self._unsubscribe, key)
            self._unsubscribing[key] += 1

    def start_heartbeat(self, interval: float) -> None:
        self._heartbeat = self._loop.call_later(interval, self._beat, interval)

    def close_quietly(self) -> None:
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    def abort(self, why: str) -> None:
        """Drops the connection at once; what is still buffered is not handled any more, and
        :meth:`connection_lost` (soon, from the loop) tells the owner."""
        if not (self.lost or self._aborted):
            log.warning("dropping a Redis pub/sub connection: %s", why)
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    # -- replies in -------------------------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind in _CONFIRMATIONS:
                self._confirm(reply[1])
                return
            if kind in _UNSUBSCRIBED:
                self._unsubscribed(reply[1])
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

    def _unsubscribed(self, key: bytes) -> None:
        outstanding = self._unsubscribing.get(key, 0)
        if outstanding:
            if outstanding == 1:
                del self._unsubscribing[key]
            else:
                self._unsubscribing[key] = outstanding - 1
            return
        self._dropped.append(key)

    def _beat(self, interval: float) -> None:
        if not self._heard:
            self.abort(f"no answer to a PING within {interval:g} s")
            return
        self._heard = False
        try:
            self.send("PING")
        except errors.UnavailableError:
            return  # already lost: connection_lost tells the owner
        self.start_heartbeat(interval)


async def open_connection(
    owner: Owner,
    params: dict[str, Any],
    tls: ssl.SSLContext | None,
    *,
    sharded: bool,
    heartbeat_interval: float,
) -> PubSubConnection:
    """A connection to the Redis of ``params`` (redis-py connection keywords, see multiplex.py), past
    its handshake and with its heartbeat running. Raises ``UnavailableError`` if Redis cannot be
    reached, refuses, or does not answer within the connect timeout; nothing is left open then."""
    loop = asyncio.get_running_loop()
    timeout = params.get("socket_connect_timeout") or CONNECT_TIMEOUT
    connection: PubSubConnection | None = None

    def made() -> PubSubConnection:
        return PubSubConnection(owner, loop, sharded=sharded)

    try:
        async with asyncio.timeout(timeout):
            if "path" in params:
                _, connection = await loop.create_unix_connection(made, params["path"])
            else:
                host, port = params.get("host", "localhost"), int(params.get("port", 6379))
                _, connection = await loop.create_connection(
                    made, host, port, ssl=tls, server_hostname=host if tls is not None else None
                )
            connection.handshake(params)
            await connection.ready
    except (OSError, TimeoutError, errors.UnavailableError) as exc:
        if connection is not None:
            connection.close_quietly()
        raise errors.UnavailableError(UNAVAILABLE) from exc
    if connection.lost:  # lost between its PONG and now
        raise errors.UnavailableError(UNAVAILABLE)
    connection.start_heartbeat(heartbeat_interval)
    return connection
