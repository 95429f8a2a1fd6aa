"""The native websocket protocol endpoint (``/ws``): a thin adapter between ``protocol`` and the
document service.

One :class:`NativeSession` per connection reads commands in order and answers each with a reply that
echoes its ``id``; the session core (``session.py``) relays its subscriptions' events. Every frame to
the client, replies included, goes through the connection's bounded outbox, which keeps the order of
replies and events and never lets a slow client hold up the hub.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from starlette.types import Scope

from protocol import (
    CloseCode,
    Command,
    Connected,
    DocumentWire,
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
    SubscriptionEnded,
    TokenExpiring,
    Unsubscribe,
    Update,
    Updated,
    UpdatedDocumentWire,
    UpdateToken,
    decode_command,
    encode_error,
    encode_event,
    encode_reply,
)
from sync_server import errors
from sync_server.dates import format_optional, format_timestamp
from sync_server.documents import Document
from sync_server.events import DocumentEvent
from sync_server.gateway.endpoint import Refused, SocketEndpoint
from sync_server.gateway.frames import OutFrame, out_frame
from sync_server.gateway.outbox import Outbox
from sync_server.gateway.session import Session
from sync_server.tokens import AccessTokenExpired
from sync_server.validation import normalize_revision

log = logging.getLogger(__name__)


def close_code_for(error: errors.SyncError) -> int:
    if isinstance(error, AccessTokenExpired):
        return CloseCode.TOKEN_EXPIRED
    if isinstance(error, errors.ForbiddenError):
        return CloseCode.FORBIDDEN
    return CloseCode.INVALID_TOKEN


def wire_code(error: errors.SyncError) -> int:
    """The sockets say 54100 for a missing document (REST says 20404)."""
    return error.socket_code if isinstance(error, errors.DocumentNotFound) else error.code


class NativeEndpoint(SocketEndpoint):
    """The endpoint of ``/ws``: the handshake carries the credentials."""

    def open(self, scope: Scope, outbox: Outbox) -> Session:
        try:
            auth = self.authenticator.authenticate(scope)
        except errors.SyncError as exc:
            raise Refused(close_code_for(exc), exc.message[:120]) from None
        session = NativeSession(outbox, self)
        session.authenticated(auth)
        return session


class NativeSession(Session):
    __slots__ = ("limiter",)
    protocol_name = "native"

    def __init__(self, outbox: Outbox, endpoint: SocketEndpoint) -> None:
        super().__init__(outbox, endpoint)
        rate = self.limits.max_commands_per_second
        # Over this soft limit a command is refused (54009); far over it (the session core's limit)
        # the connection is closed.
        self.limiter = RateLimiter(rate, burst=rate)

    # -- frames out -------------------------------------------------------------------------------

    @staticmethod
    def build_event_frame(event: DocumentEvent) -> OutFrame:
        if event.kind == "updated":
            payload = encode_event(Updated(document=event_document_wire(event)))
        else:
            revision = None if event.revision is None else format(event.revision, "x")
            reason: Any = event.reason
            payload = encode_event(Removed(event.sid, event.unique_name, revision, reason))
        return out_frame(payload)

    def reply(self, command_id: Any, result: dict[str, Any]) -> None:
        self.answer(out_frame(encode_reply(command_id, result)))

    def reply_error(self, command_id: Any, error: errors.SyncError) -> None:
        self.answer(_error_frame(command_id, error))

    def push(self, event: Connected | SubscriptionEnded | TokenExpiring) -> None:
        self.outbox.send(out_frame(encode_event(event)))

    def on_started(self) -> None:
        principal = self.principal
        self.push(Connected(principal.identity, principal.service_sid, self.endpoint_id))

    def on_token_expiring(self, expires_in: int) -> None:
        self.push(TokenExpiring(expires_in))

    def on_token_expired(self) -> None:
        self.outbox.close(CloseCode.TOKEN_EXPIRED, "access token expired")

    def on_revoked(self, sid: str, unique_name: str | None) -> None:
        error = errors.ForbiddenError("The read permission on this document was revoked")
        self.push(SubscriptionEnded(sid, unique_name, error.code, error.message, error.status))

    # -- commands ---------------------------------------------------------------------------------

    async def handle(self, data: str | bytes) -> None:
        if not self.allow_requests():
            return
        rate_ok = self.limiter.allow(asyncio.get_running_loop().time())
        try:
            command = decode_command(data)
        except ProtocolError as exc:
            # The protocol package has its own error type (it imports nothing from the server).
            self.answer(out_frame(encode_error(exc.command_id, exc.code, exc.message, exc.status)))
            return
        if not rate_ok:
            self.reply_error(command.id, errors.RateLimited("Too many commands: slow down"))
            return
        if isinstance(command, Ping):
            self.reply(command.id, {})  # in turn, after the replies still owed
            return
        if isinstance(command, _PIPELINED):
            # One document's read or write: started now, answered in turn (session.py, pipelining).
            await self.pipeline(self._one_document(command))
            return
        # Everything else changes the session's own state: it waits for the commands before it.
        await self.settle()
        try:
            await self.dispatch(command)
        except errors.SyncError as exc:
            self.reply_error(command.id, exc)
        except Exception:
            log.exception("command %s failed", type(command).__name__)
            self.reply_error(command.id, errors.SyncError("Internal server error"))

    async def _one_document(self, command: Set | Update | SetTtl | Remove | Fetch) -> OutFrame:
        """Serves a pipelined command and returns its reply; runs up to its store call unawaited."""
        try:
            result = await self._document_result(command)
        except errors.SyncError as exc:
            return _error_frame(command.id, exc)
        except Exception:
            log.exception("command %s failed", type(command).__name__)
            return _error_frame(command.id, errors.SyncError("Internal server error"))
        return out_frame(encode_reply(command.id, result))

    async def _document_result(self, command: Set | Update | SetTtl | Remove | Fetch) -> dict[str, Any]:
        who = self.principal
        if isinstance(command, Set | Update):
            doc = await self.documents.write(
                who,
                command.doc,
                data=command.data,
                merge=isinstance(command, Update),
                if_match=command.if_match,
                ttl=command.ttl,
            )
            return {"document": document_wire(doc)}
        if isinstance(command, SetTtl):
            doc = await self.documents.write(who, command.doc, data=None, ttl=command.ttl)
            return {"document": document_wire(doc)}
        if isinstance(command, Remove):
            doc = await self.documents.remove(who, command.doc)
            return {"sid": doc.sid}
        return {"document": document_wire(await self.documents.fetch(who, command.doc))}

    async def dispatch(self, command: Command) -> None:
        """Serves a command that is not pipelined (it opens, subscribes or renews the token)."""
        who = self.principal
        if isinstance(command, Open):
            doc, created = await self.documents.open(
                who, name=command.name, sid=command.sid, mode=command.mode, data=command.data, ttl=command.ttl
            )
            if command.subscribe:
                await self.subscribe_one(
                    doc.sid,
                    lambda snapshot: self.reply(
                        command.id, {"document": document_wire(snapshot), "created": created}
                    ),
                )
            else:
                self.reply(command.id, {"document": document_wire(doc), "created": created})
        elif isinstance(command, Subscribe):
            await self.subscribe_one(command.doc, lambda snapshot: self._subscribed(command, snapshot))
        elif isinstance(command, Unsubscribe):
            self.reply(command.id, {"unsubscribed": await self.subscriptions.unsubscribe(command.doc)})
        elif isinstance(command, UpdateToken):
            self.reply(command.id, {"expires_at": self.renew_token(command.token).expires_at})

    def _subscribed(self, command: Subscribe, snapshot: Document) -> None:
        if command.revision is not None and _same_revision(command.revision, snapshot.revision_text):
            self.reply(
                command.id, {"unchanged": True, "revision": snapshot.revision_text, "sid": snapshot.sid}
            )
        else:
            self.reply(command.id, {"document": document_wire(snapshot)})


_PIPELINED = (Set, Update, SetTtl, Remove, Fetch)
"""The commands that touch one document and no session state: pipelined."""


def _error_frame(command_id: Any, error: errors.SyncError) -> OutFrame:
    return out_frame(encode_error(command_id, wire_code(error), error.message, error.status))


def document_wire(doc: Document) -> DocumentWire:
    """The document as the native protocol carries it (data embedded as stored JSON text)."""
    return {
        "sid": doc.sid,
        "unique_name": doc.unique_name,
        "revision": doc.revision_text,
        "data": orjson.Fragment(doc.data),
        "date_created": format_timestamp(doc.date_created),
        "date_updated": format_timestamp(doc.date_updated),
        "date_expires": format_optional(doc.date_expires),
        "created_by": doc.created_by,
    }


def event_document_wire(event: DocumentEvent) -> UpdatedDocumentWire:
    """The document of an ``updated`` event, with the revision it replaced."""
    assert event.revision is not None and event.data is not None
    return {
        "sid": event.sid,
        "unique_name": event.unique_name,
        "revision": format(event.revision, "x"),
        "previous_revision": format(event.revision - 1, "x") if event.revision > 0 else None,
        "data": orjson.Fragment(event.data),
        "date_created": format_timestamp(event.date_created),
        "date_updated": format_timestamp(event.date_updated),
        "date_expires": format_optional(event.date_expires),
        "created_by": event.created_by,
    }


def _same_revision(client_revision: str, current: str) -> bool:
    try:
        return normalize_revision(client_revision) == current
    except errors.SyncError:
        return False
