"""The Twilsock V3.0 endpoint (``/v3/wsconnect``) for the official Twilio Sync JS SDK.

A thin adapter: frames are decoded by ``twilsock_codec``, tunnelled HTTP requests are routed by
``twilsock_routes`` and served by the same :class:`~sync_server.core.SyncCore` as the native
protocol. The session starts with the SDK's ``init`` (which carries the token); then it answers
``message`` requests in order and relays subscribed documents' events as ``notification`` frames.
Every frame goes through the connection's bounded outbox, so replies and events keep their order.

A request's failure is always an ``http_status`` in its reply, never a dropped socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from protocol import CloseCode, RateLimiter
from sync_server import errors
from sync_server.core import Principal
from sync_server.events import DocumentEvent
from sync_server.gateway import twilsock_codec as codec
from sync_server.gateway import twilsock_routes as routes
from sync_server.gateway.auth import Authenticated
from sync_server.gateway.endpoint import SocketEndpoint
from sync_server.gateway.frames import OutFrame, out_frame
from sync_server.gateway.outbox import outbox_for
from sync_server.gateway.subscriptions import Subscriptions
from sync_server.store.models import Document

log = logging.getLogger(__name__)

PROTOCOL_NAME = "twilsock"
TOKEN_WARNING_SECONDS = 60
INIT_TIMEOUT = 30.0
# After refusing a token the client is given this long to close before the server does.
DENIED_LINGER = 10.0
# Give the client time to read a ``close`` message before the websocket itself closes.
CLOSE_GRACE = 1.0
DEFAULT_HOST = "cds.us1.twilio.com"
SUBSCRIPTION_ANSWER = {"estimated_delivery_in_ms": 5000, "max_batch_size": 100}

After = Callable[[], None]


def build_event_frame(event: DocumentEvent) -> OutFrame:
    """The notification of a document event; built once per event and process (see events.py)."""
    body = routes.updated_body(event) if event.kind == "updated" else routes.removed_body(event.sid)
    return out_frame(codec.notification(routes.DOCUMENT_MESSAGE_TYPE, body), binary=True)


class TwilsockEndpoint(SocketEndpoint):
    """The ASGI app of ``/v3/wsconnect``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        session = TwilsockSession(websocket, self)
        await session.run()


class TwilsockSession:
    def __init__(self, websocket: WebSocket, endpoint: TwilsockEndpoint) -> None:
        self.websocket = websocket
        self.endpoint = endpoint
        self.core = endpoint.core
        self.limits = endpoint.limits
        self.outbox = outbox_for(websocket, endpoint.limits.max_buffered_bytes)
        self.auth: Authenticated | None = None
        self.refused = False
        self.subscriptions: Subscriptions | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.token_timers: list[asyncio.TimerHandle] = []
        # Far over the native protocol's command rate the connection is closed, as there. (No soft
        # limit: the SDK treats a refused transport frame as a connection problem, not a slow-down.)
        rate = endpoint.limits.max_commands_per_second * 2
        self.hard_limiter = RateLimiter(rate, burst=rate)

    # -- frames out -------------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        self.outbox.send(out_frame(message, binary=True))

    def _deliver(self, event: DocumentEvent) -> None:
        self.outbox.send(event.frame(PROTOCOL_NAME, build_event_frame))

    def _too_slow(self) -> None:
        self.outbox.close(CloseCode.TOO_SLOW, "too slow: events were not read fast enough")

    def _close_later(self, code: int, reason: str, delay: float = CLOSE_GRACE) -> None:
        loop = asyncio.get_running_loop()
        self.timers.append(loop.call_later(delay, self.outbox.close, code, reason))

    # -- the session ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self.outbox.closed:
                timeout = INIT_TIMEOUT if self.auth is None else None
                try:
                    message = await asyncio.wait_for(self.websocket.receive(), timeout)
                except TimeoutError:
                    break
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is None:
                    continue
                if len(data) > self.limits.max_frame_bytes:
                    self.outbox.close(CloseCode.MESSAGE_TOO_BIG, "frame too large")
                    break
                await self.handle(data)
        finally:
            for timer in self.timers + self.token_timers:
                timer.cancel()
            if self.subscriptions is not None:
                await self.subscriptions.close()
            await self.outbox.aclose()

    async def handle(self, data: bytes | str) -> None:
        try:
            frame = codec.decode_frame(data)
        except codec.TwilsockProtocolError as exc:
            # 406 tells the SDK the server cannot parse it: a fatal close, no reconnect loop.
            self.send(codec.close_message(406, exc.args[0]))
            self._close_later(1002, "protocol error")
            return
        method = frame.method
        if method == "reply":
            return  # the client's ack of one of our frames (not rate-limited: they follow our pushes)
        if not self.hard_limiter.allow(asyncio.get_running_loop().time()):
            self.outbox.close(CloseCode.RATE_LIMITED, "request rate far over the limit")
            return
        if method == "close":
            self.outbox.close(1000)
            return
        if method == "init":
            self._init(frame)
        elif self.auth is None:
            self.send(codec.reply(frame.id, 401, description="init must come first"))
        elif method == "update":
            self._update_token(frame)
        elif method == "message":
            await self._upstream(frame, self.auth.principal)
        elif method == "ping":
            self.send(codec.reply(frame.id))
        else:
            self.send(codec.reply(frame.id, 400, description=f"unsupported method {method!r}"))

    # -- tokens -----------------------------------------------------------------------------------

    def _init(self, frame: codec.TwilsockFrame) -> None:
        if self.auth is not None or self.refused:
            # One init per connection: a refusal is final (the SDK is then ``denied`` for good).
            self.send(codec.reply(frame.id, 400, description="init was already answered"))
            return
        try:
            auth = self._verify(frame)
        except errors.SyncError as exc:
            self.refused = True
            self.send(_token_refusal(frame.id, exc))
            self._close_later(1000, "access token refused", DENIED_LINGER)
            return
        self.auth = auth
        self.subscriptions = Subscriptions(
            self.endpoint.hub,
            self.core,
            auth.principal,
            self.limits.max_subscriptions,
            self._deliver,
            self._too_slow,
        )
        self.send(
            codec.reply(
                frame.id,
                extra={
                    "capabilities": ["client_update"],
                    "continuation_token": codec.new_message_id(),
                    "init_registrations": [],
                },
            )
        )
        self._schedule_token_timers()

    def _verify(self, frame: codec.TwilsockFrame) -> Authenticated:
        token = frame.header.get("token")
        if not isinstance(token, str) or not token:
            raise errors.AuthenticationError("An access token is required")
        return self.endpoint.authenticator.verify_token(token)

    def _update_token(self, frame: codec.TwilsockFrame) -> None:
        assert self.auth is not None
        try:
            fresh = self._verify(frame)
            if fresh.principal != self.auth.principal or fresh.grant is None:
                raise errors.AuthenticationError(
                    "The new token is for another identity or service", code=20103, status=401
                )
        except errors.SyncError as exc:
            self.send(_token_refusal(frame.id, exc))
            return
        self.auth = fresh
        self.send(codec.reply(frame.id))
        self._schedule_token_timers()

    def _schedule_token_timers(self) -> None:
        for timer in self.token_timers:
            timer.cancel()
        self.token_timers.clear()
        grant = None if self.auth is None else self.auth.grant
        if grant is None:
            return
        loop = asyncio.get_running_loop()
        remaining = grant.expires_at - time.time()
        warn_in = max(0.0, remaining - TOKEN_WARNING_SECONDS)
        self.token_timers.append(loop.call_later(warn_in, self.send, codec.token_about_to_expire()))
        self.token_timers.append(loop.call_later(max(0.0, remaining), self._token_expired))

    def _token_expired(self) -> None:
        # 410 makes the SDK emit ``tokenExpired``; the app then reconnects with a fresh token.
        self.send(codec.close_message(410, "access token expired"))
        self._close_later(CloseCode.TOKEN_EXPIRED, "access token expired")

    # -- upstream requests ------------------------------------------------------------------------

    async def _upstream(self, frame: codec.TwilsockFrame, who: Principal) -> None:
        request = frame.header.get("http_request")
        if not isinstance(request, dict):
            self.send(codec.reply(frame.id, 400, description="message without http_request"))
            return
        after: After | None = None
        try:
            code, body, after = await self._serve(request, frame, who)
        except errors.SyncError as exc:
            code, body = exc.status, {**exc.to_dict(), "code": routes.wire_code(exc)}
        except Exception:
            log.exception("twilsock request failed")
            error = errors.SyncError("Internal server error")
            code, body = error.status, error.to_dict()
        self.send(codec.reply(frame.id, http_status=code, body=body))
        if after is not None:
            after()

    async def _serve(
        self, request: dict[str, Any], frame: codec.TwilsockFrame, who: Principal
    ) -> tuple[int, Any, After | None]:
        path = str(request.get("path", ""))
        target = routes.route(str(request.get("method", "GET")), path)
        if target.service is not None and target.service != who.service_sid:
            raise errors.NotFoundError(f"The requested resource {path} was not found")
        host = str(request.get("host") or DEFAULT_HOST)
        account = self.core.store.account_sid
        if target.action == "subscriptions":
            return await self._subscriptions(_json_object(frame))
        if target.action == "create":
            body = _json_object(frame)
            doc, _ = await self.core.open(
                who,
                name=_optional_str(body, "unique_name"),
                sid=None,
                mode="create_new",
                data=_optional_object(body, "data"),
                ttl=_optional_int(body, "ttl"),
            )
            return 201, routes.descriptor(doc, account, host), None
        assert target.doc is not None
        if target.action == "fetch":
            return 200, routes.descriptor(await self.core.fetch(who, target.doc), account, host), None
        if target.action == "remove":
            await self.core.remove(who, target.doc)
            return 204, None, None
        body = _json_object(frame)
        doc = await self.core.write(
            who,
            target.doc,
            data=_optional_object(body, "data"),
            if_match=_header(request, "if-match"),
            ttl=_optional_int(body, "ttl"),
        )
        return 200, routes.update_result(doc, account, host), None

    async def _subscriptions(self, body: dict[str, Any]) -> tuple[int, Any, After | None]:
        assert self.subscriptions is not None
        subs = self.subscriptions
        action = body.get("action")
        correlation_id = body.get("correlation_id")
        requests = body.get("requests")
        if action not in ("establish", "cancel") or not isinstance(requests, list):
            raise errors.ValidationError("Invalid subscription request")
        notes: list[dict[str, Any]] = []
        activate: list[str] = []
        for item in requests:
            if not isinstance(item, dict) or not isinstance(item.get("object_sid"), str):
                raise errors.ValidationError("Invalid subscription request")
            sid: str = item["object_sid"]
            object_type = str(item.get("object_type", "document"))
            if action == "cancel":
                await subs.unsubscribe(sid)
                notes.append(routes.canceled_body(sid, correlation_id))
                continue
            if object_type != "document":
                error = errors.ValidationError(f"Subscriptions to {object_type} are not supported")
                notes.append(routes.failed_body(sid, object_type, correlation_id, error))
                continue
            try:
                snapshot = await subs.subscribe(sid)
            except errors.SyncError as exc:
                notes.append(routes.failed_body(sid, object_type, correlation_id, exc))
                continue
            notes.extend(_established(snapshot, correlation_id, item.get("last_event_id")))
            activate.append(snapshot.sid)

        def after() -> None:
            # The reply is written; now the notifications, then events held while snapshots were read.
            for note in notes:
                self.send(codec.notification(routes.DOCUMENT_MESSAGE_TYPE, note))
            for sid in activate:
                subs.activate(sid)

        return 202, SUBSCRIPTION_ANSWER, after


def _established(snapshot: Document, correlation_id: Any, last_event_id: Any) -> list[dict[str, Any]]:
    """``subscription_established``, then the current state if the client has not seen it yet."""
    notes = [routes.established_body(snapshot.sid, correlation_id, snapshot.revision)]
    known = last_event_id if isinstance(last_event_id, int) else -1
    if snapshot.revision > known:
        notes.append(routes.updated_body_from_document(snapshot))
    return notes


def _token_refusal(message_id: str | None, exc: errors.SyncError) -> bytes:
    # errorCode 20104 (AccessTokenExpired) is what makes the SDK emit ``tokenExpired``.
    code = 403 if isinstance(exc, errors.ForbiddenError) else 401
    return codec.reply(message_id, code, description=exc.message, error_code=exc.code)


def _json_object(frame: codec.TwilsockFrame) -> dict[str, Any]:
    body = codec.json_payload(frame)
    if body is None and not frame.payload:
        return {}
    if not isinstance(body, dict):
        raise errors.ValidationError("The request body must be a JSON object", code=errors.INVALID_JSON)
    return body


def _header(request: dict[str, Any], name: str) -> str | None:
    headers = request.get("headers")
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if str(key).lower() == name and value is not None:
            return str(value)
    return None


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.ValidationError(f"Invalid {key}: it must be a string")
    return value


def _optional_object(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise errors.ValidationError(
        "Invalid document data: the data must be a JSON object", code=errors.INVALID_DATA
    )


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.ValidationError(f"Invalid {key}: it must be an integer", code=errors.INVALID_TTL)
    return value
