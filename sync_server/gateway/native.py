"""The native websocket protocol endpoint (``/ws``): a thin adapter between ``protocol`` and the core.

One :class:`NativeSession` per connection reads commands in order, answers each with a reply that
echoes its ``id``, and relays its subscriptions' events. Every frame to the client, replies included,
goes through the connection's bounded :class:`~sync_server.gateway.outbox.Outbox`, which keeps the
order of replies and events and never lets a slow client hold up the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from protocol import (
    CloseCode,
    Command,
    Connected,
    Fetch,
    Open,
    Ping,
    ProtocolError,
    RateLimiter,
    Remove,
    Removed,
    Set,
    SetTtl,
    Subscribe,
    TokenExpiring,
    Unsubscribe,
    Update,
    Updated,
    UpdateToken,
    decode_command,
    encode_error,
    encode_event,
    encode_reply,
)
from sync_server import errors
from sync_server.core import document_wire, event_document_wire
from sync_server.events import DocumentEvent
from sync_server.gateway.auth import Authenticated
from sync_server.gateway.endpoint import SocketEndpoint
from sync_server.gateway.frames import OutFrame, out_frame
from sync_server.gateway.outbox import outbox_for
from sync_server.gateway.subscriptions import Subscriptions
from sync_server.tokens import AccessTokenExpired
from sync_server.validation import normalize_revision

log = logging.getLogger(__name__)

PROTOCOL_NAME = "native"
TOKEN_WARNING_SECONDS = 60


def build_event_frame(event: DocumentEvent) -> OutFrame:
    """The native frame of a document event; built once per event and process (see events.py)."""
    if event.kind == "updated":
        payload = encode_event(Updated(document=event_document_wire(event)))
    else:
        revision = None if event.revision is None else format(event.revision, "x")
        reason: Any = event.reason
        payload = encode_event(Removed(event.sid, event.unique_name, revision, reason))
    return out_frame(payload)


def close_code_for(error: errors.SyncError) -> int:
    if isinstance(error, AccessTokenExpired):
        return CloseCode.TOKEN_EXPIRED
    if isinstance(error, errors.ForbiddenError):
        return CloseCode.FORBIDDEN
    return CloseCode.INVALID_TOKEN


class NativeEndpoint(SocketEndpoint):
    """The ASGI app of ``/ws``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        try:
            auth = self.authenticator.authenticate(scope)
        except errors.SyncError as exc:
            # Accept first: browsers cannot read the status of a refused handshake, only a close code.
            await websocket.accept()
            await websocket.close(code=close_code_for(exc), reason=exc.message[:120])
            return
        await websocket.accept()
        session = NativeSession(websocket, self, auth)
        await session.run()


class NativeSession:
    def __init__(self, websocket: WebSocket, endpoint: NativeEndpoint, auth: Authenticated) -> None:
        limits = endpoint.limits
        self.websocket = websocket
        self.core = endpoint.core
        self.authenticator = endpoint.authenticator
        self.auth = auth
        self.limits = limits
        self.outbox = outbox_for(websocket, limits.max_buffered_bytes)
        self.subscriptions = Subscriptions(
            endpoint.hub,
            endpoint.core,
            auth.principal,
            limits.max_subscriptions,
            self._deliver,
            self._too_slow,
        )
        rate = limits.max_commands_per_second
        # Over the soft limit a command is refused (54009); far over it the connection is closed.
        self.limiter = RateLimiter(rate, burst=rate)
        self.hard_limiter = RateLimiter(rate * 2, burst=rate * 2)
        self.timers: list[asyncio.TimerHandle] = []

    # -- frames out -------------------------------------------------------------------------------

    def _deliver(self, event: DocumentEvent) -> None:
        self.outbox.send(event.frame(PROTOCOL_NAME, build_event_frame))

    def _too_slow(self) -> None:
        self.outbox.close(CloseCode.TOO_SLOW, "too slow: events were not read fast enough")

    def reply(self, command_id: Any, result: dict[str, Any]) -> None:
        self.outbox.send(out_frame(encode_reply(command_id, result)))

    def reply_error(self, command_id: Any, error: errors.SyncError) -> None:
        code = error.socket_code if isinstance(error, errors.DocumentNotFound) else error.code
        self.outbox.send(out_frame(encode_error(command_id, code, error.message, error.status)))

    # -- the session ------------------------------------------------------------------------------

    async def run(self) -> None:
        principal = self.auth.principal
        connection_id = "CN" + secrets.token_hex(16)
        self.outbox.send(
            out_frame(encode_event(Connected(principal.identity, principal.service_sid, connection_id)))
        )
        self._schedule_token_timers()
        loop = asyncio.get_running_loop()
        try:
            while not self.outbox.closed:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                frame = message.get("text")
                if frame is None:
                    frame = message.get("bytes")
                if frame is None:
                    continue
                if len(frame) > self.limits.max_frame_bytes:
                    self.outbox.close(CloseCode.MESSAGE_TOO_BIG, "frame too large")
                    break
                now = loop.time()
                if not self.hard_limiter.allow(now):
                    self.outbox.close(CloseCode.RATE_LIMITED, "command rate far over the limit")
                    break
                await self.handle(frame, rate_ok=self.limiter.allow(now))
        finally:
            for timer in self.timers:
                timer.cancel()
            await self.subscriptions.close()
            await self.outbox.aclose()

    async def handle(self, frame: str | bytes, *, rate_ok: bool = True) -> None:
        try:
            command = decode_command(frame)
        except ProtocolError as exc:
            self.reply_error(exc.command_id, errors.SyncError(exc.message, code=exc.code, status=exc.status))
            return
        if not rate_ok:
            self.reply_error(command.id, errors.RateLimited("Too many commands: slow down"))
            return
        try:
            await self.dispatch(command)
        except errors.SyncError as exc:
            self.reply_error(command.id, exc)
        except Exception:
            log.exception("command %s failed", type(command).__name__)
            self.reply_error(command.id, errors.SyncError("Internal server error"))

    async def dispatch(self, command: Command) -> None:
        principal = self.auth.principal
        if isinstance(command, Open):
            doc, created = await self.core.open(
                principal,
                name=command.name,
                sid=command.sid,
                mode=command.mode,
                data=command.data,
                ttl=command.ttl,
            )
            if command.subscribe:
                doc = await self.subscriptions.subscribe(doc.sid)
            self.reply(command.id, {"document": document_wire(doc), "created": created})
            self.subscriptions.activate(doc.sid)
        elif isinstance(command, Subscribe):
            doc = await self.subscriptions.subscribe(command.doc)
            if command.revision is not None and _same_revision(command.revision, doc.revision_text):
                self.reply(command.id, {"unchanged": True, "revision": doc.revision_text, "sid": doc.sid})
            else:
                self.reply(command.id, {"document": document_wire(doc)})
            self.subscriptions.activate(doc.sid)
        elif isinstance(command, Unsubscribe):
            self.reply(command.id, {"unsubscribed": await self.subscriptions.unsubscribe(command.doc)})
        elif isinstance(command, Fetch):
            self.reply(command.id, {"document": document_wire(await self.core.fetch(principal, command.doc))})
        elif isinstance(command, Set | Update):
            doc = await self.core.write(
                principal,
                command.doc,
                data=command.data,
                merge=isinstance(command, Update),
                if_match=command.if_match,
                ttl=command.ttl,
            )
            self.reply(command.id, {"document": document_wire(doc)})
        elif isinstance(command, SetTtl):
            doc = await self.core.write(principal, command.doc, data=None, ttl=command.ttl)
            self.reply(command.id, {"document": document_wire(doc)})
        elif isinstance(command, Remove):
            doc = await self.core.remove(principal, command.doc)
            self.reply(command.id, {"sid": doc.sid})
        elif isinstance(command, UpdateToken):
            self.reply(command.id, {"expires_at": self._update_token(command.token)})
        elif isinstance(command, Ping):
            self.reply(command.id, {})

    # -- tokens -----------------------------------------------------------------------------------

    def _update_token(self, token: str) -> int:
        fresh = self.authenticator.verify_token(token)
        if fresh.principal != self.auth.principal or fresh.grant is None:
            raise errors.AuthenticationError(
                "The new token is for another identity or service", code=20103, status=401
            )
        self.auth = fresh
        self._schedule_token_timers()
        return fresh.grant.expires_at

    def _schedule_token_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        grant = self.auth.grant
        if grant is None:
            return
        loop = asyncio.get_running_loop()
        remaining = grant.expires_at - time.time()
        warn_in = max(0.0, remaining - TOKEN_WARNING_SECONDS)
        self.timers.append(loop.call_later(warn_in, self._warn_token, grant.expires_at))
        self.timers.append(loop.call_later(max(0.0, remaining), self._token_expired))

    def _warn_token(self, expires_at: int) -> None:
        expires_in = max(0, int(expires_at - time.time()))
        self.outbox.send(out_frame(encode_event(TokenExpiring(expires_in))))

    def _token_expired(self) -> None:
        with contextlib.suppress(Exception):
            self.outbox.close(CloseCode.TOKEN_EXPIRED, "access token expired")


def _same_revision(client_revision: str, current: str) -> bool:
    try:
        return normalize_revision(client_revision) == current
    except errors.SyncError:
        return False
