"""Twilsock V3.0 framing, without I/O: what the official Twilio JS SDK sends and expects.

A message is one binary websocket frame::

    TWILSOCK V3.0 <header byte length>\\r\\n<header JSON>\\r\\n<payload>

The header is a JSON object with ``method`` (``init``, ``update``, ``message``, ``reply``,
``notification``, ``ping``, ``close``, ``client_update``), usually an ``id`` that a ``reply`` echoes,
and ``payload_size`` (bytes). :func:`decode_frame` raises :class:`TwilsockProtocolError` for anything
else; the builders below produce the server's frames (see ``shared/reference/twilsock.md``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "JSON_TYPE",
    "MAGIC",
    "TwilsockFrame",
    "TwilsockProtocolError",
    "close_message",
    "decode_frame",
    "encode_frame",
    "json_payload",
    "new_message_id",
    "notification",
    "reply",
    "status",
    "token_about_to_expire",
]

MAGIC = b"TWILSOCK V3.0 "
JSON_TYPE = "application/json"
# The header length is a short decimal; anything longer is not a Twilsock frame.
_MAX_HEADER_DIGITS = 8

HTTP_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class TwilsockProtocolError(Exception):
    """A frame that is not well-formed Twilsock V3.0."""


@dataclass(frozen=True, slots=True)
class TwilsockFrame:
    header: dict[str, Any]
    payload: bytes

    @property
    def method(self) -> str:
        method = self.header.get("method")
        return method if isinstance(method, str) else ""

    @property
    def id(self) -> str | None:
        value = self.header.get("id")
        return value if isinstance(value, str) else None


def decode_frame(data: bytes | str) -> TwilsockFrame:
    raw = data.encode() if isinstance(data, str) else data
    if not raw.startswith(MAGIC):
        raise TwilsockProtocolError("not a TWILSOCK V3.0 frame")
    end = raw.find(b"\r\n", len(MAGIC), len(MAGIC) + _MAX_HEADER_DIGITS + 1)
    digits = raw[len(MAGIC) : end]
    if end < 0 or not digits.isdigit():
        raise TwilsockProtocolError("bad header length")
    start = end + 2
    stop = start + int(digits)
    if stop > len(raw):
        raise TwilsockProtocolError("truncated header")
    try:
        header = orjson.loads(raw[start:stop])
    except orjson.JSONDecodeError as exc:
        raise TwilsockProtocolError("header is not JSON") from exc
    if not isinstance(header, dict):
        raise TwilsockProtocolError("header is not a JSON object")
    size = header.get("payload_size", 0)
    if not isinstance(size, int) or size < 0:
        raise TwilsockProtocolError("bad payload_size")
    if size == 0:
        return TwilsockFrame(header, b"")
    if raw[stop : stop + 2] != b"\r\n" or stop + 2 + size > len(raw):
        raise TwilsockProtocolError("truncated payload")
    return TwilsockFrame(header, raw[stop + 2 : stop + 2 + size])


def json_payload(frame: TwilsockFrame) -> Any:
    """The payload parsed as JSON, or None when it is empty or not JSON.

    Lenient on purpose: the SDK sends every DELETE with the raw body ``data_sync`` labelled JSON.
    """
    if not frame.payload:
        return None
    try:
        return orjson.loads(frame.payload)
    except orjson.JSONDecodeError:
        return None


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One whole Twilsock message; sets ``payload_size`` (and a JSON ``payload_type`` if unset)."""
    header = dict(header, payload_size=len(payload))
    if payload:
        header.setdefault("payload_type", JSON_TYPE)
    head = orjson.dumps(header)
    return b"%s%d\r\n%s\r\n%s" % (MAGIC, len(head), head, payload)


def new_message_id() -> str:
    return "TM" + secrets.token_hex(16)


def status(code: int, description: str | None = None, error_code: int | None = None) -> dict[str, Any]:
    """A transport ``status``; ``errorCode`` 20104 makes the SDK emit ``tokenExpired``."""
    value: dict[str, Any] = {"code": code, "status": HTTP_REASONS.get(code, "Error")}
    if error_code is not None:
        value["errorCode"] = error_code
    if description is not None:
        value["description"] = description
    return value


def reply(
    message_id: str | None,
    code: int = 200,
    *,
    description: str | None = None,
    error_code: int | None = None,
    http_status: int | None = None,
    body: Any = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A ``reply``: transport ``status`` plus, for upstream requests, ``http_status`` and a JSON body."""
    header: dict[str, Any] = {
        "method": "reply",
        "id": message_id,
        "status": status(code, description, error_code),
    }
    if http_status is not None:
        header["http_status"] = {"code": http_status, "status": HTTP_REASONS.get(http_status, "Error")}
        header["http_headers"] = {"content-type": JSON_TYPE}
    header.update(extra or {})
    return encode_frame(header, b"" if body is None else orjson.dumps(body))


def notification(message_type: str, body: Any, message_id: str | None = None) -> bytes:
    header = {"method": "notification", "id": message_id or new_message_id(), "message_type": message_type}
    return encode_frame(header, orjson.dumps(body))


def token_about_to_expire() -> bytes:
    return encode_frame(
        {"method": "client_update", "id": new_message_id(), "client_update_type": "token_about_to_expire"}
    )


def close_message(code: int, description: str) -> bytes:
    """A server ``close``: 410 means the token expired; 308 asks the client to reconnect."""
    return encode_frame({"method": "close", "id": new_message_id(), "status": status(code, description)})
