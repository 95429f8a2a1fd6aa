"""The HTTP-over-Twilsock surface of Sync Documents, without I/O: routes and wire shapes.

The SDK tunnels REST-like requests (``message`` frames carrying ``http_request``) through the socket.
:func:`route` maps a method and path to a :class:`Route`; the builders turn documents and events into
the JSON the SDK reads. Revisions become ``last_event_id`` directly: the store bumps a document's
revision by exactly one per write, which is the growing event id the SDK orders updates by.

Only Documents are served; Lists, Maps and Streams answer 404 (never a dropped socket).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import orjson

from sync_server import errors
from sync_server.dates import format_optional, format_timestamp
from sync_server.documents import Document
from sync_server.events import DocumentEvent

__all__ = [
    "DOCUMENT_MESSAGE_TYPE",
    "Route",
    "canceled_body",
    "descriptor",
    "document_path",
    "established_body",
    "failed_body",
    "removed_body",
    "route",
    "update_result",
    "updated_body",
    "updated_body_from_document",
    "wire_code",
]

DOCUMENT_MESSAGE_TYPE = "com.twilio.rtd.cds.document"

Action = Literal["create", "fetch", "write", "remove", "subscriptions"]


@dataclass(frozen=True, slots=True)
class Route:
    action: Action
    doc: str | None = None
    """The document's SID or unique name (URL-decoded), for per-document actions."""
    service: str | None = None
    """The service named in the path (``/v3/Services/{sid}/Documents…``), if any."""


def route(method: str, path: str) -> Route:
    """Raises a 404 ``NotFoundError`` for unknown paths, 405 for a known path with the wrong method."""
    parts = [unquote(part) for part in path.split("?", 1)[0].strip("/").split("/")]
    service = None
    if len(parts) >= 4 and parts[:2] == ["v3", "Services"]:
        service = parts[2]
        parts = ["v3", *parts[3:]]
    method = method.upper()
    if parts == ["v4", "Subscriptions"] and service is None:
        return _checked(method, ("POST",), Route("subscriptions"))
    if parts == ["v3", "Documents"]:
        return _checked(method, ("POST",), Route("create", service=service))
    if len(parts) == 3 and parts[:2] == ["v3", "Documents"] and parts[2]:
        actions: dict[str, Action] = {"GET": "fetch", "POST": "write", "DELETE": "remove"}
        action = actions.get(method)
        if action is None:
            raise errors.MethodNotAllowed(actions)
        return Route(action, parts[2], service)
    raise errors.NotFoundError(f"The requested resource {path} was not found (only Documents are served)")


def _checked(method: str, allowed: tuple[str, ...], result: Route) -> Route:
    if method not in allowed:
        raise errors.MethodNotAllowed(allowed)
    return result


def document_path(doc: Document) -> str:
    return f"/v3/Services/{doc.service_sid}/Documents/{doc.sid}"


def descriptor(doc: Document, account_sid: str, host: str) -> dict[str, Any]:
    """The document as the SDK's ``GET /v3/Documents/{id}`` answer (its ``url`` is used from then on)."""
    return {
        "url": f"https://{host}{document_path(doc)}",
        "sid": doc.sid,
        "account_sid": account_sid,
        "service_sid": doc.service_sid,
        "unique_name": doc.unique_name,
        "revision": doc.revision_text,
        "last_event_id": doc.revision,
        "data": orjson.Fragment(doc.data),
        "date_created": format_timestamp(doc.date_created),
        "date_updated": format_timestamp(doc.date_updated),
        "date_expires": format_optional(doc.date_expires),
        "created_by": doc.created_by,
    }


def update_result(doc: Document, account_sid: str, host: str) -> dict[str, Any]:
    """The answer to a write: the SDK reads ``revision, last_event_id, date_updated, date_expires``."""
    return descriptor(doc, account_sid, host)


def updated_body(event: DocumentEvent) -> dict[str, Any]:
    assert event.revision is not None and event.data is not None
    return _updated(event.sid, event.revision, event.data, event.date_updated)


def updated_body_from_document(doc: Document) -> dict[str, Any]:
    """A ``document_updated`` replaying the current state to a client that missed events."""
    return _updated(doc.sid, doc.revision, doc.data, doc.date_updated)


def _updated(sid: str, revision: int, data: bytes, date_updated: int) -> dict[str, Any]:
    return {
        "event_type": "document_updated",
        "event": {
            "id": revision,
            "document_sid": sid,
            "document_data": orjson.Fragment(data),
            "document_revision": format(revision, "x"),
            "date_created": format_timestamp(date_updated),
        },
    }


def removed_body(sid: str) -> dict[str, Any]:
    return {"event_type": "document_removed", "event": {"document_sid": sid}}


def established_body(sid: str, correlation_id: Any, last_event_id: int) -> dict[str, Any]:
    return {
        "event_type": "subscription_established",
        "correlation_id": correlation_id,
        "event": {
            "object_sid": sid,
            "object_type": "document",
            "replay_status": "completed",
            "last_event_id": last_event_id,
        },
    }


def canceled_body(sid: str, correlation_id: Any) -> dict[str, Any]:
    return {
        "event_type": "subscription_canceled",
        "correlation_id": correlation_id,
        "event": {"object_sid": sid, "object_type": "document"},
    }


def failed_body(sid: str, object_type: str, correlation_id: Any, error: errors.SyncError) -> dict[str, Any]:
    """``subscription_failed``; a 404 makes the SDK's document emit ``removed``."""
    return {
        "event_type": "subscription_failed",
        "correlation_id": correlation_id,
        "event": {
            "object_sid": sid,
            "object_type": object_type,
            "error": {"status": error.status, "code": wire_code(error), "message": error.message},
        },
    }


def wire_code(error: errors.SyncError) -> int:
    """Sockets say 54100 for a missing document (REST says 20404)."""
    return error.socket_code if isinstance(error, errors.DocumentNotFound) else error.code
