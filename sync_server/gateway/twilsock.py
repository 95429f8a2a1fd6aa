"""The Twilsock V3.0 endpoint (``/v3/wsconnect``) for the official Twilio Sync JS SDK.

A thin adapter: frames are decoded by ``twilsock_codec``, tunnelled HTTP requests are routed by
``twilsock_routes`` and served by the same document service as the native protocol, and the session
core (``session.py``) runs the connection. The session starts with the SDK's ``init`` (which carries
the token); then it answers ``message`` requests in order and relays subscribed documents' events as
``notification`` frames. Every frame goes through the connection's bounded outbox, so replies and
events keep their order.

A request's failure is always an ``http_status`` in its reply, never a dropped socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Scope

from protocol import CloseCode
from sync_server import errors
from sync_server.documents import Document
from sync_server.events import DocumentEvent
from sync_server.gateway import twilsock_codec as codec
from sync_server.gateway import twilsock_routes as routes
from sync_server.gateway.endpoint import SocketEndpoint
from sync_server.gateway.frames import OutFrame, out_frame
from sync_server.gateway.outbox import Outbox
from sync_server.gateway.session import Session, SubscribeResult
from sync_server.principal import Principal

log = logging.getLogger(__name__)

# After refusing a token the client is given this long to close before the server does.
DENIED_LINGER = 10.0
# Give the client time to read a ``close`` message before the websocket itself closes.
CLOSE_GRACE = 1.0
DEFAULT_HOST = "cds.us1.twilio.com"
MAX_BATCH = 100
"""Subscription requests one ``/v4/Subscriptions`` call may carry (what ``max_batch_size`` tells the SDK)."""
SUBSCRIPTION_ANSWER = {"estimated_delivery_in_ms": 5000, "max_batch_size": MAX_BATCH}

After = Callable[[], None]


class TwilsockEndpoint(SocketEndpoint):
    """The endpoint of ``/v3/wsconnect``: the token comes later, in the ``init`` frame."""

    def open(self, scope: Scope, outbox: Outbox) -> Session:
        return TwilsockSession(outbox, self)


class TwilsockSession(Session):
    __slots__ = ("refused",)
    protocol_name = "twilsock"

    def __init__(self, outbox: Outbox, endpoint: SocketEndpoint) -> None:
        super().__init__(outbox, endpoint)
        self.refused = False

    # -- frames out -------------------------------------------------------------------------------

    @staticmethod
    def build_event_frame(event: DocumentEvent) -> OutFrame:
        body = routes.updated_body(event) if event.kind == "updated" else routes.removed_body(event.sid)
        return out_frame(codec.notification(routes.DOCUMENT_MESSAGE_TYPE, body), binary=True)

    def send(self, message: bytes) -> None:
        self.outbox.send(out_frame(message, binary=True))

    def on_token_expiring(self, expires_in: int) -> None:
        self.send(codec.token_about_to_expire())

    def on_token_expired(self) -> None:
        # 410 makes the SDK emit ``tokenExpired``; the app then reconnects with a fresh token.
        self.send(codec.close_message(410, "access token expired"))
        self.close_later(CloseCode.TOKEN_EXPIRED, "access token expired", CLOSE_GRACE)

    def on_revoked(self, sid: str, unique_name: str | None) -> None:
        # The SDK only heeds a subscription_failed that answers its own pending request, so the
        # connection is closed with a "reconnect" status: the SDK re-establishes its subscriptions,
        # and the revoked one then fails with 403/54007, which the document emits as a 'failure'.
        self.send(codec.close_message(308, "access to a subscribed document was revoked"))
        self.close_later(CloseCode.GOING_AWAY, "access revoked", CLOSE_GRACE)

    def receive_timeout(self) -> float | None:
        return self.limits.init_timeout if self.auth is None else None

    def on_receive_timeout(self) -> None:
        self.outbox.close(CloseCode.POLICY_VIOLATION, "init not received in time")

    # -- frames in --------------------------------------------------------------------------------

    async def handle(self, data: bytes | str) -> None:
        try:
            frame = codec.decode_frame(data)
        except codec.TwilsockProtocolError as exc:
            # 406 tells the SDK the server cannot parse it: a fatal close, no reconnect loop.
            self.send(codec.close_message(406, exc.args[0]))
            self.close_later(1002, "protocol error", CLOSE_GRACE)
            return
        method = frame.method
        if method == "reply":
            return  # the client's ack of one of our frames (not rate-limited: they follow our pushes)
        # No soft limit as on the native protocol: the SDK treats a refused transport frame as a
        # connection problem, not a slow-down.
        if not self.allow_requests():
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
            await self._upstream(frame, self.principal)
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
            auth = self.authenticator.verify_token(_token(frame))
        except errors.SyncError as exc:
            self.refused = True
            self.send(_token_refusal(frame.id, exc))
            self.close_later(1000, "access token refused", DENIED_LINGER)
            return
        self.authenticated(auth)
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

    def _update_token(self, frame: codec.TwilsockFrame) -> None:
        try:
            self.renew_token(_token(frame))
        except errors.SyncError as exc:
            self.send(_token_refusal(frame.id, exc))
            return
        self.send(codec.reply(frame.id))

    # -- upstream requests ------------------------------------------------------------------------

    async def _upstream(self, frame: codec.TwilsockFrame, who: Principal) -> None:
        request = frame.header.get("http_request")
        if not isinstance(request, dict):
            self.send(codec.reply(frame.id, 400, description="message without http_request"))
            return
        try:
            await self._serve(request, frame, who)
        except errors.SyncError as exc:
            self._answer(frame, exc.status, {**exc.to_dict(), "code": routes.wire_code(exc)})
        except Exception:
            log.exception("twilsock request failed")
            error = errors.SyncError("Internal server error")
            self._answer(frame, error.status, error.to_dict())

    def _answer(self, frame: codec.TwilsockFrame, status: int, body: Any = None) -> None:
        self.send(codec.reply(frame.id, http_status=status, body=body))

    async def _serve(self, request: dict[str, Any], frame: codec.TwilsockFrame, who: Principal) -> None:
        """Serves one tunnelled request and answers it (or raises the error to answer)."""
        path = str(request.get("path", ""))
        target = routes.route(str(request.get("method", "GET")), path)
        if target.service is not None and target.service != who.service_sid:
            raise errors.NotFoundError(f"The requested resource {path} was not found")
        host = str(request.get("host") or DEFAULT_HOST)
        account = self.documents.account_sid
        if target.action == "subscriptions":
            await self._subscription_request(frame, _json_object(frame))
            return
        if target.action == "create":
            body = _json_object(frame)
            doc = await self.documents.create(
                who,
                unique_name=_optional_str(body, "unique_name"),
                data=_optional_object(body, "data"),
                ttl=_optional_int(body, "ttl"),
            )
            self._answer(frame, 201, routes.descriptor(doc, account, host))
            return
        assert target.doc is not None
        if target.action == "fetch":
            self._answer(
                frame, 200, routes.descriptor(await self.documents.fetch(who, target.doc), account, host)
            )
        elif target.action == "remove":
            await self.documents.remove(who, target.doc)
            self._answer(frame, 204)
        else:
            body = _json_object(frame)
            doc = await self.documents.write(
                who,
                target.doc,
                data=_optional_object(body, "data"),
                if_match=_header(request, "if-match"),
                ttl=_optional_int(body, "ttl"),
            )
            self._answer(frame, 200, routes.update_result(doc, account, host))

    async def _subscription_request(self, frame: codec.TwilsockFrame, body: dict[str, Any]) -> None:
        action = body.get("action")
        correlation_id = body.get("correlation_id")
        requests = body.get("requests")
        if action not in ("establish", "cancel") or not isinstance(requests, list):
            raise errors.ValidationError("Invalid subscription request")
        if len(requests) > MAX_BATCH:
            raise errors.ValidationError(f"At most {MAX_BATCH} subscription requests at once")
        # The frame counted as one request; each further document it names counts too, so the rate
        # limit holds for batches (counted here, where the body is parsed anyway).
        if len(requests) > 1 and not self.allow_requests(len(requests) - 1):
            return
        items: list[tuple[str, str]] = []
        for item in requests:
            if not isinstance(item, dict) or not isinstance(item.get("object_sid"), str):
                raise errors.ValidationError("Invalid subscription request")
            items.append((item["object_sid"], str(item.get("object_type", "document"))))
        if action == "cancel":
            for sid, _ in items:
                await self.subscriptions.unsubscribe(sid)
            self._answer(frame, 202, SUBSCRIPTION_ANSWER)
            for sid, _ in items:
                self._notify(routes.canceled_body(sid, correlation_id))
            return
        documents = [sid for sid, object_type in items if object_type == "document"]
        last_event_ids = {item["object_sid"]: item.get("last_event_id") for item in requests}

        def answer(results: list[SubscribeResult]) -> None:
            # The reply, then the notifications; the session core then releases held events.
            self._answer(frame, 202, SUBSCRIPTION_ANSWER)
            snapshots = iter(results)
            for sid, object_type in items:
                if object_type != "document":
                    error = errors.ValidationError(f"Subscriptions to {object_type} are not supported")
                    self._notify(routes.failed_body(sid, object_type, correlation_id, error))
                    continue
                result = next(snapshots)
                if isinstance(result, errors.SyncError):
                    self._notify(routes.failed_body(sid, object_type, correlation_id, result))
                    continue
                for note in _established(result, correlation_id, last_event_ids.get(sid)):
                    self._notify(note)

        await self.subscribe_then(documents, answer)

    def _notify(self, body: dict[str, Any]) -> None:
        self.send(codec.notification(routes.DOCUMENT_MESSAGE_TYPE, body))


def _established(snapshot: Document, correlation_id: Any, last_event_id: Any) -> list[dict[str, Any]]:
    """``subscription_established``, then the current state if the client has not seen it yet."""
    notes = [routes.established_body(snapshot.sid, correlation_id, snapshot.revision)]
    known = last_event_id if isinstance(last_event_id, int) else -1
    if snapshot.revision > known:
        notes.append(routes.updated_body_from_document(snapshot))
    return notes


def _token(frame: codec.TwilsockFrame) -> str:
    token = frame.header.get("token")
    if not isinstance(token, str) or not token:
        raise errors.AuthenticationError("An access token is required")
    return token


def _token_refusal(message_id: str | None, exc: errors.SyncError) -> bytes:
    # errorCode 20104 (AccessTokenExpired) is what makes the SDK emit ``tokenExpired``.
    code = 403 if isinstance(exc, errors.ForbiddenError) else 401
    return codec.reply(message_id, code, description=exc.message, error_code=exc.code)


def _json_object(frame: codec.TwilsockFrame) -> dict[str, Any]:
    body = codec.json_payload(frame)
    if body is None and not frame.payload:
        return {}
    if not isinstance(body, dict):
        raise errors.InvalidJson("The request body must be a JSON object")
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
    raise errors.InvalidData("Invalid document data: the data must be a JSON object")


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidTtl(f"Invalid {key}: it must be an integer")
    return value
