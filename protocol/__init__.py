"""The native websocket protocol of the sync server, free of I/O.

Commands (client → server) carry an ``id`` and an ``op``; replies echo the ``id``; events are pushes
without one. :mod:`protocol.codec` is the only place frames are parsed or written; close codes and what
a client should do after each live in :mod:`protocol.close_codes`. The wire format is described in
``protocol/README.md``.

This package imports nothing from the server, from Starlette, Redis, asyncio or any socket library, so
clients and tests can use it alone.
"""

from protocol.close_codes import CLOSE_CODES, CloseCode, CloseInfo, Reconnect, reconnect_policy
from protocol.codec import (
    decode_command,
    decode_server_message,
    encode_command,
    encode_error,
    encode_event,
    encode_reply,
    encode_server_message,
)
from protocol.errors import INVALID_COMMAND, INVALID_DATA, INVALID_TTL, ProtocolError
from protocol.limits import MAX_ID_LENGTH, RateLimiter
from protocol.messages import (
    REMOVAL_REASONS,
    Command,
    CommandId,
    Connected,
    DocumentWire,
    ErrorReply,
    Event,
    Fetch,
    JSONObject,
    Open,
    OpenMode,
    Ping,
    RemovalReason,
    Remove,
    Removed,
    Reply,
    ServerMessage,
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
)

__all__ = [
    "CLOSE_CODES",
    "INVALID_COMMAND",
    "INVALID_DATA",
    "INVALID_TTL",
    "MAX_ID_LENGTH",
    "REMOVAL_REASONS",
    "CloseCode",
    "CloseInfo",
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
    "ProtocolError",
    "RateLimiter",
    "Reconnect",
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
    "decode_command",
    "decode_server_message",
    "encode_command",
    "encode_error",
    "encode_event",
    "encode_reply",
    "encode_server_message",
    "reconnect_policy",
]
