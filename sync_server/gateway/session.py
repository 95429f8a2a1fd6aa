"""What every websocket session does, whatever its wire protocol: the session core.

A :class:`Session` owns one connection's frame order, its subscriptions, the far-over-the-limit rate
check, the token timers and token renewal, and the cleanup when the connection ends. A protocol
adapter (``native.py``, ``twilsock.py``) subclasses it and supplies only its wire: :meth:`Session.handle`
decodes and dispatches one frame, and a few hooks encode what the core has to say (an event, a token
warning, an expiry, a revoked subscription).

The session is driven by its connection (``uvicorn_ws.py``) through three calls: :meth:`Session.start`
once the handshake is answered, :meth:`Session.receive` for each frame in arrival order, and
:meth:`Session.end` once the connection closes. An idle session holds no task: frames are served one
at a time, in order, by a task that exists only while a frame is waiting or being served (reading from
the client is paused meanwhile), and the cleanup runs in a task only when it has subscriptions to
release.

Pipelining: an adapter may start a command that reads or writes one document without waiting for
the commands before it to finish (:meth:`Session.pipeline`), up to :data:`MAX_PIPELINED` at once per
connection. Each pipelined command is started in arrival order and runs synchronously up to its
store call, so the store sends them to Redis in arrival order (``DocumentService``'s contract) and one
connection's writes apply in the order it sent them; their replies are written in arrival order too.
Any other command waits until every pipelined one before it has finished (:meth:`Session.settle`).

Ordering rule for subscriptions: events of a new subscription are held until the client has its
subscribe answer. :meth:`Session.subscribe_then` enforces it: it subscribes, then calls the
adapter's synchronous ``answer`` (which writes the reply), then releases the held events, with no
``await`` in between that could let an event overtake the reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from protocol import CloseCode, RateLimiter
from sync_server import errors, metrics
from sync_server.documents import Document
from sync_server.events import DocumentEvent
from sync_server.gateway.auth import Authenticated
from sync_server.gateway.frames import OutFrame
from sync_server.gateway.outbox import Outbox
from sync_server.gateway.subscriptions import Subscriptions
from sync_server.principal import Principal
from sync_server.tokens import AccessGrant, InvalidAccessTokenIssuer

if TYPE_CHECKING:
    from sync_server.gateway.endpoint import SocketEndpoint

log = logging.getLogger(__name__)

TOKEN_WARNING_SECONDS = 180
"""How long before its token expires a client is warned (Twilio's ``tokenAboutToExpire`` lead)."""

MAX_PIPELINED = 32
"""Commands of one connection in flight at once (:meth:`Session.pipeline`); past it, reading pauses."""
REPLY_BYTES = 20 * 1024
"""The most a pipelined command's reply takes (a 16 KiB document and its fields). Replies that come
back together must fit in the connection's outgoing buffer, so fewer run at once when it is small."""

SubscribeResult = Document | errors.SyncError


class _Reply:
    """A pipelined command's place in the reply order: its frame once it has one."""

    __slots__ = ("frame",)

    def __init__(self) -> None:
        self.frame: OutFrame | None = None


def new_endpoint_id() -> str:
    """A connection's id: what events and webhooks report as the change's endpoint."""
    return "CN" + secrets.token_hex(16)


class Session:
    """One websocket connection. Subclasses implement :meth:`handle` and the ``on_…`` hooks."""

    protocol_name: ClassVar[str]
    """Names the protocol in each event's frame cache (one encoding per event and protocol)."""

    __slots__ = (
        "_ended",
        "_hard_limiter",
        "_hub",
        "_in_flight",
        "_inbox",
        "_receive_timer",
        "_replies",
        "_send_scheduled",
        "_serving",
        "_subscriptions",
        "_timers",
        "_token_timers",
        "_waiter",
        "auth",
        "authenticator",
        "documents",
        "endpoint_id",
        "limits",
        "outbox",
    )

    def __init__(self, outbox: Outbox, endpoint: SocketEndpoint) -> None:
        limits = endpoint.limits
        self.outbox = outbox
        self.documents = endpoint.documents
        self.authenticator = endpoint.authenticator
        self.limits = limits
        self.endpoint_id = new_endpoint_id()
        self.auth: Authenticated | None = None
        self._hub = endpoint.hub
        self._subscriptions: Subscriptions | None = None
        # Timers and the frame queue exist only while needed: most connections sit idle for hours.
        self._timers: list[asyncio.TimerHandle] | None = None
        self._token_timers: list[asyncio.TimerHandle] | None = None
        self._receive_timer: asyncio.TimerHandle | None = None
        self._inbox: collections.deque[str | bytes] | None = None
        self._serving = False
        self._ended = False
        # Pipelined commands: how many run, the replies still owed in arrival order, and the future
        # that settle() or a full pipeline waits on (made only when one waits).
        self._in_flight = 0
        self._replies: collections.deque[_Reply] | None = None
        self._send_scheduled = False
        self._waiter: asyncio.Future[None] | None = None
        rate = limits.max_commands_per_second * 2
        # Far over the command rate, the connection is closed (4429). It counts requests, not
        # frames: one Twilsock frame may carry a batch of subscriptions.
        self._hard_limiter = RateLimiter(rate, burst=rate)

    # -- what each protocol supplies ----------------------------------------------------------------

    @staticmethod
    def build_event_frame(event: DocumentEvent) -> OutFrame:
        """The frame of a document event; built once per event and process (see events.py)."""
        raise NotImplementedError

    async def handle(self, data: str | bytes) -> None:
        """Decodes and serves one frame from the client; never raises for bad input."""
        raise NotImplementedError

    def on_token_expiring(self, expires_in: int) -> None:
        raise NotImplementedError

    def on_token_expired(self) -> None:
        raise NotImplementedError

    def on_revoked(self, sid: str, unique_name: str | None) -> None:
        """Tells the client that access control ended its subscription to ``sid``."""
        raise NotImplementedError

    def on_started(self) -> None:
        """Called once before the first frame is read."""

    def receive_timeout(self) -> float | None:
        """How long the next frame may take to arrive (None: for ever; pings detect dead peers)."""
        return None

    def on_receive_timeout(self) -> None:
        """The frame did not arrive within :meth:`receive_timeout`; the session then ends."""

    # -- state --------------------------------------------------------------------------------------

    @property
    def principal(self) -> Principal:
        assert self.auth is not None, "not authenticated yet"
        return self.auth.principal

    @property
    def subscriptions(self) -> Subscriptions:
        assert self._subscriptions is not None, "not authenticated yet"
        return self._subscriptions

    def authenticated(self, auth: Authenticated) -> None:
        """Starts acting as ``auth``'s principal, through this connection."""
        principal = auth.principal.on_endpoint(self.endpoint_id)
        self.auth = Authenticated(principal, auth.grant)
        self._subscriptions = Subscriptions(
            self._hub,
            self.documents,
            principal,
            self.limits.max_subscriptions,
            self.outbox,
            self.protocol_name,
            self.build_event_frame,
            self._too_slow,
            self.on_revoked,
        )
        self._schedule_token_timers()

    # -- driven by the connection -------------------------------------------------------------------

    def start(self) -> None:
        """The handshake has been answered: the session counts as open and greets the client."""
        metrics.connections_open(self.protocol_name).inc()
        self.on_started()
        self._await_frame()

    def receive(self, data: str | bytes) -> None:
        """One frame from the client, in arrival order; served after the frames before it."""
        if self._ended or self.outbox.closed:
            return
        if self._receive_timer is not None:
            self._receive_timer.cancel()
            self._receive_timer = None
        if len(data) > self.limits.max_frame_bytes:
            self.outbox.close(CloseCode.MESSAGE_TOO_BIG, "frame too large")
            return
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append(data)
        if self._serving:
            # One frame is served at a time; the client waits (TCP backpressure) until this one is.
            self.outbox.pause_reading()
            return
        self._serving = True
        self.outbox.start_task(self._serve_frames())

    def end(self) -> None:
        """The connection is closing or closed: no further frame is served, timers stop, and the
        subscriptions are released (after the frame being served, if any, is done)."""
        if self._ended:
            return
        self._ended = True
        if self._inbox is not None:
            self._inbox.clear()
        for timers in (self._timers, self._token_timers):
            for timer in timers or ():
                timer.cancel()
        if self._receive_timer is not None:
            self._receive_timer.cancel()
            self._receive_timer = None
        if not self._serving:
            self._release()

    async def _serve_frames(self) -> None:
        inbox = self._inbox
        try:
            while inbox and not self._ended and not self.outbox.closed:
                await self.handle(inbox.popleft())
        except Exception:  # handle() answers bad input itself: this is a bug
            log.exception("websocket session failed")
            self.outbox.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._serving = False
            self._inbox = None
            if self._ended:
                self._release()
            elif not self.outbox.closed:
                self.outbox.resume_reading()
                self._await_frame()

    # -- pipelined commands -------------------------------------------------------------------------

    async def pipeline(self, work: Coroutine[Any, Any, OutFrame]) -> None:
        """Starts ``work`` (one command: it answers bad input and failures with an error frame, never
        raises) without waiting for it to finish; its frame is written after the replies owed to the
        commands before it. Returns at once, or once fewer are in flight than the room left in the
        connection's outgoing buffer takes replies for (:data:`MAX_PIPELINED` at most; one at a time
        while a client that is behind on reading leaves no room).

        ``work`` must reach its store call without awaiting anything else first: that is what keeps
        one connection's commands reaching Redis in the order they arrived."""
        while self._in_flight and not self._room_for_one_more():
            await self._wait()
        if self._replies is None:
            self._replies = collections.deque()
        slot = _Reply()
        self._replies.append(slot)
        self._in_flight += 1
        self.outbox.start_task(self._complete(work, slot))

    def _room_for_one_more(self) -> bool:
        # The replies of all in flight, and this one, must fit beside what already waits to be sent.
        in_flight = self._in_flight
        room = self.limits.max_buffered_bytes - self.outbox.pending_bytes()
        return in_flight < MAX_PIPELINED and (in_flight + 1) * REPLY_BYTES <= room

    def answer(self, frame: OutFrame) -> None:
        """Writes a reply in arrival order: after those owed to pipelined commands still running.
        Written before this returns when none is still running (so nothing sent next overtakes it)."""
        replies = self._replies
        if replies:
            slot = _Reply()
            slot.frame = frame
            replies.append(slot)
            self._send_ready()
        else:
            self.outbox.send(frame)

    async def settle(self) -> None:
        """Returns once every pipelined command has finished and its reply is written."""
        while self._in_flight:
            await self._wait()
        self._send_ready()

    async def _complete(self, work: Coroutine[Any, Any, OutFrame], slot: _Reply) -> None:
        try:
            slot.frame = await work
        finally:
            self._in_flight -= 1
            replies = self._replies
            assert replies is not None
            if slot.frame is None:  # cancelled (the server stopping): its turn passes
                replies.remove(slot)
            # Written a moment later, in one callback for all the replies that are ready by then:
            # the replies of one Redis read finish in the same loop iteration, and a write per reply
            # was a send() each (strace, a writer 32 deep: 2.1 write calls per command, now 1.3).
            if not self._send_scheduled:
                self._send_scheduled = True
                asyncio.get_running_loop().call_soon(self._send_ready)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)

    def _send_ready(self) -> None:
        """Writes the replies whose turn has come, in order; several as one write where the outbox
        allows it (their size is bounded by :meth:`_room_for_one_more`, as when written one by one)."""
        self._send_scheduled = False
        replies = self._replies
        if not replies:
            return
        ready: list[OutFrame] = []
        while replies and replies[0].frame is not None:
            frame = replies.popleft().frame
            assert frame is not None
            ready.append(frame)
        if not replies:
            self._replies = None  # a connection that pipelined once keeps no empty deque
        outbox = self.outbox
        direct = outbox.direct
        if direct is not None and len(ready) > 1:
            direct.write(b"".join([frame.wire for frame in ready]))
            return
        for frame in ready:
            outbox.send(frame)

    async def _wait(self) -> None:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def _await_frame(self) -> None:
        timeout = self.receive_timeout()
        if timeout is not None and not self.outbox.closed:
            loop = asyncio.get_running_loop()
            self._receive_timer = loop.call_later(timeout, self._receive_timed_out)

    def _receive_timed_out(self) -> None:
        self._receive_timer = None
        self.on_receive_timeout()
        # The session ends with the wait, whatever the adapter did.
        self.outbox.close(CloseCode.POLICY_VIOLATION, "no frame in time")

    def _release(self) -> None:
        metrics.connections_open(self.protocol_name).dec()
        subscriptions = self._subscriptions
        if subscriptions is not None and len(subscriptions):
            self.outbox.start_task(subscriptions.close())

    def allow_requests(self, count: int = 1) -> bool:
        """Counts ``count`` requests; far over the limit the connection is closed (4429)."""
        if self._hard_limiter.allow(asyncio.get_running_loop().time(), count):
            return True
        self.outbox.close(CloseCode.RATE_LIMITED, "request rate far over the limit")
        return False

    def close_later(self, code: int, reason: str, delay: float) -> None:
        if self._ended:
            return
        if self._timers is None:
            self._timers = []
        self._timers.append(asyncio.get_running_loop().call_later(delay, self.outbox.close, code, reason))

    # -- subscriptions ------------------------------------------------------------------------------

    async def subscribe_then(
        self, idents: Sequence[str], answer: Callable[[list[SubscribeResult]], None]
    ) -> None:
        """Subscribes to each document, calls ``answer`` with the snapshots (or each failure), then
        releases the events that arrived meanwhile. ``answer`` writes the reply: it is synchronous, so
        no event can be sent between the reply and the activation."""
        subscriptions = self.subscriptions
        results: list[SubscribeResult] = []
        for ident in idents:
            try:
                results.append(await subscriptions.subscribe(ident))
            except errors.SyncError as exc:
                results.append(exc)
        answer(results)
        for result in results:
            if isinstance(result, Document):
                subscriptions.activate(result.sid)

    async def subscribe_one(self, ident: str, answer: Callable[[Document], None]) -> None:
        """:meth:`subscribe_then` for one document; a failure is raised, not answered."""
        failure: list[errors.SyncError] = []

        def answer_one(results: list[SubscribeResult]) -> None:
            result = results[0]
            if isinstance(result, Document):
                answer(result)
            else:
                failure.append(result)

        await self.subscribe_then([ident], answer_one)
        if failure:
            raise failure[0]

    def _too_slow(self) -> None:
        self.outbox.close(CloseCode.TOO_SLOW, "too slow: events were not read fast enough")

    # -- tokens -------------------------------------------------------------------------------------

    def renew_token(self, token: str) -> AccessGrant:
        """Verifies a fresh token for this same client and starts using it; returns its grant.

        Raises an ``AuthenticationError`` (the token's own 2010x code, or 20103 for a token of
        another identity or service); the session keeps its current token then."""
        fresh = self.authenticator.verify_token(token)
        if fresh.grant is None or self.auth is None or not fresh.principal.same_client(self.auth.principal):
            raise InvalidAccessTokenIssuer("The new token is for another identity or service")
        self.auth = Authenticated(self.auth.principal, fresh.grant)
        self._schedule_token_timers()
        return fresh.grant

    def _schedule_token_timers(self) -> None:
        for timer in self._token_timers or ():
            timer.cancel()
        self._token_timers = None
        grant = None if self.auth is None else self.auth.grant
        if grant is None or self._ended:
            return
        loop = asyncio.get_running_loop()
        remaining = grant.expires_at - time.time()
        warn_in = max(0.0, remaining - TOKEN_WARNING_SECONDS)
        self._token_timers = [
            loop.call_later(warn_in, self._warn_token, grant.expires_at),
            loop.call_later(max(0.0, remaining), self._expire_token),
        ]

    def _warn_token(self, expires_at: int) -> None:
        self.on_token_expiring(max(0, int(expires_at - time.time())))

    def _expire_token(self) -> None:
        with contextlib.suppress(Exception):
            self.on_token_expired()
