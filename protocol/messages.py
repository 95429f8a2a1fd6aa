"""Every message of the native websocket protocol, as frozen dataclasses (plus the document's wire shape).

Three kinds of frame travel, all JSON text:

- **commands**, client → server: an ``id`` (echoed in the reply) and an ``op``; one class per op;
- **replies**, server → client: :class:`Reply` (``ok: true`` + result fields) or :class:`ErrorReply`;
- **events**, server → client pushes without an ``id``: :class:`Connected`, :class:`Updated`,
  :class:`Removed`, :class:`SubscriptionEnded`, :class:`TokenExpiring`.

Nothing here touches the wire: :mod:`protocol.codec` turns frames into these objects and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias, TypedDict

import orjson

__all__ = [
    "REMOVAL_REASONS",
    "Command",
    "CommandId",
    "Connected",
    "DocumentWire",
    "ErrorReply",
    "Event",
    "Fetch",
    "JSONObject",
    "Open",
    "OpenMode",
    "Ping",
    "RemovalReason",
    "Remove",
    "Removed",
    "Reply",
    "ServerMessage",
    "Set",
    "SetTtl",
    "Subscribe",
    "SubscriptionEnded",
    "TokenExpiring",
    "Unsubscribe",
    "Update",
    "UpdateToken",
    "Updated",
    "UpdatedDocumentWire",
]

CommandId: TypeAlias = int | str
JSONObject: TypeAlias = dict[str, Any]
OpenMode: TypeAlias = Literal["open_or_create", "open_existing", "create_new"]
RemovalReason: TypeAlias = Literal["deleted", "expired", "service_deleted"]
REMOVAL_REASONS: tuple[RemovalReason, ...] = ("deleted", "expired", "service_deleted")


class DocumentWire(TypedDict):
    """A document as replies and events carry it.

    A TypedDict, not a dataclass: the server builds these dicts once per write and the codec hands them
    to orjson as they are. Any value, typically ``data``, may be an ``orjson.Fragment`` holding
    already-serialized JSON (e.g. the string stored in Redis), which is then copied into the frame without
    being parsed. Dates are ``YYYY-MM-DDTHH:MM:SSZ`` (UTC); ``revision`` is lowercase hex.
    """

    sid: str
    unique_name: str | None
    revision: str
    data: JSONObject | orjson.Fragment
    date_created: str
    date_updated: str
    date_expires: str | None
    created_by: str


class UpdatedDocumentWire(DocumentWire):
    """The document in an ``updated`` event: also the revision it replaces (``None`` right after create)."""

    previous_revision: str | None


# --- commands -------------------------------------------------------------------------------------------
# ``doc`` is a document SID (``ET…``) or unique name, resolved by the server in the connection's service.


@dataclass(frozen=True, slots=True)
class Open:
    """Open a document by ``name`` or ``sid`` (at most one), creating it if ``mode`` allows.

    ``create_new`` may omit both (an anonymous document) but may not give a ``sid``. ``data`` and ``ttl``
    apply only when the document is created. With ``subscribe`` the reply also starts the subscription.
    """

    op: ClassVar[str] = "open"
    id: CommandId
    name: str | None = None
    sid: str | None = None
    mode: OpenMode = "open_or_create"
    data: JSONObject | None = None
    ttl: int | None = None
    subscribe: bool = True


@dataclass(frozen=True, slots=True)
class Fetch:
    op: ClassVar[str] = "fetch"
    id: CommandId
    doc: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to ``doc``; with the ``revision`` the client holds, an unchanged document is not resent."""

    op: ClassVar[str] = "subscribe"
    id: CommandId
    doc: str
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    op: ClassVar[str] = "unsubscribe"
    id: CommandId
    doc: str


@dataclass(frozen=True, slots=True)
class Set:
    """Replace the data of ``doc``; with ``if_match``, only if its revision is still that one."""

    op: ClassVar[str] = "set"
    id: CommandId
    doc: str
    data: JSONObject
    if_match: str | None = None
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """Shallow-merge ``data`` into the data of ``doc``: its top-level keys replace the document's."""

    op: ClassVar[str] = "update"
    id: CommandId
    doc: str
    data: JSONObject
    if_match: str | None = None
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class SetTtl:
    op: ClassVar[str] = "set_ttl"
    id: CommandId
    doc: str
    ttl: int


@dataclass(frozen=True, slots=True)
class Remove:
    op: ClassVar[str] = "remove"
    id: CommandId
    doc: str


@dataclass(frozen=True, slots=True)
class UpdateToken:
    """Replace the connection's access token before it expires (same identity and service)."""

    op: ClassVar[str] = "update_token"
    id: CommandId
    token: str

    def __repr__(self) -> str:
        # The token is a bearer credential: keep it out of logs and tracebacks.
        return f"UpdateToken(id={self.id!r}, token=<redacted>)"


@dataclass(frozen=True, slots=True)
class Ping:
    op: ClassVar[str] = "ping"
    id: CommandId


Command: TypeAlias = (
    Open | Fetch | Subscribe | Unsubscribe | Set | Update | SetTtl | Remove | UpdateToken | Ping
)


# --- replies --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Success: ``{"id": …, "ok": true, **result}``; ``result`` may not use ``id``, ``ok`` or ``error``."""

    id: CommandId | None
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Failure: ``{"id": …, "ok": false, "error": {"code", "message", "status"}}``."""

    id: CommandId | None
    code: int
    message: str
    status: int


# --- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The first frame after the server accepts the connection."""

    event: ClassVar[str] = "connected"
    identity: str
    service_sid: str
    connection_id: str


@dataclass(frozen=True, slots=True)
class Updated:
    """A subscribed document changed (or was created); ``document`` is its new state."""

    event: ClassVar[str] = "updated"
    document: UpdatedDocumentWire


@dataclass(frozen=True, slots=True)
class Removed:
    """A subscribed document is gone; its subscription ended with it.

    ``revision`` is the last revision, or ``None`` when expiry removed the document (Redis has
    evicted it by the time the removal is announced).
    """

    event: ClassVar[str] = "removed"
    sid: str
    unique_name: str | None
    revision: str | None
    reason: RemovalReason


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    """The server ended a subscription while the document lives on: the client may no longer read it
    (access control, code 54007). Resubscribing fails the same way until a read right is granted."""

    event: ClassVar[str] = "subscription_ended"
    sid: str
    unique_name: str | None
    code: int
    message: str
    status: int


@dataclass(frozen=True, slots=True)
class TokenExpiring:
    """The access token expires in ``expires_in`` seconds: send ``update_token`` before it does."""

    event: ClassVar[str] = "token_expiring"
    expires_in: int


Event: TypeAlias = Connected | Updated | Removed | SubscriptionEnded | TokenExpiring
ServerMessage: TypeAlias = Reply | ErrorReply | Event
