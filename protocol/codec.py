"""The one place frames become messages and messages become frames (compact JSON, UTF-8, via orjson).

Server side: :func:`decode_command` for incoming frames; :func:`encode_reply`, :func:`encode_error` and
:func:`encode_event` (or :func:`encode_server_message`) for outgoing ones. Client side, the mirror:
:func:`encode_command` and :func:`decode_server_message`.

Decoding is strict about types and lenient about extras: every known field is type-checked (``ttl`` is an
int and not a bool, ``data`` a JSON object, ``id`` an int or a short string…), ``null`` is the same as
absent for optional fields, and unknown fields are ignored so that newer clients can talk to older
servers. Anything refused raises :class:`~protocol.errors.ProtocolError` with a message naming the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, cast, get_args

import orjson

from protocol.errors import INVALID_COMMAND, INVALID_DATA, INVALID_JSON, INVALID_TTL, ProtocolError
from protocol.limits import MAX_ID_LENGTH
from protocol.messages import (
    REMOVAL_REASONS,
    Command,
    CommandId,
    Connected,
    ErrorReply,
    Event,
    Fetch,
    JSONObject,
    Open,
    OpenMode,
    Ping,
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
    "decode_command",
    "decode_server_message",
    "encode_command",
    "encode_error",
    "encode_event",
    "encode_reply",
    "encode_server_message",
    "has_long_digit_run",
]

_OPEN_MODES: tuple[OpenMode, ...] = get_args(OpenMode)
_RESERVED_REPLY_KEYS = frozenset({"id", "ok", "error"})
# Integers JavaScript holds exactly: ids are echoed to browsers, which would round anything larger.
_MAX_SAFE_INTEGER = 2**53 - 1
# orjson turns integers beyond 64 bits into floats without a word. Any run of 19+ digits may be such an
# integer, so those (rare) frames are parsed by the stdlib instead, which keeps them exact.
_DIGITS_AS_ZEROS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19
# How orjson says a document nests deeper than it reads (1,024 levels; older releases: "Recursion").
_DEPTH_MESSAGE = re.compile(r"(depth|recursion) limit", re.IGNORECASE)


# --- JSON -----------------------------------------------------------------------------------------------


def _loads(frame: str | bytes) -> Any:
    """Parse one frame as strict JSON in UTF-8 (no NaN/Infinity, no lone surrogates)."""
    try:
        if not has_long_digit_run(frame):
            return orjson.loads(frame)
        return _loads_exact(frame if isinstance(frame, str) else frame.decode())
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        if isinstance(exc, orjson.JSONDecodeError) and _DEPTH_MESSAGE.match(exc.msg):
            raise _too_deep() from None
        # ``from None``: parser messages quote the frame, which may hold a token.
        raise ProtocolError(INVALID_COMMAND, "frame is not valid UTF-8 JSON") from None


def has_long_digit_run(text: str | bytes) -> bool:
    """Whether ``text`` holds 19 or more ASCII digits in a row (a number orjson may not keep exactly).

    Every digit becomes "0" and every other byte a space, then 19 zeros are searched for: two C passes,
    about ten times faster on a 1 KiB document than the regular expression ``[0-9]{19,}``. A str is
    encoded first (``surrogatepass``: a lone surrogate is no digit, and the parser reports it).
    """
    raw = text.encode(errors="surrogatepass") if isinstance(text, str) else text
    return _LONG_RUN in raw.translate(_DIGITS_AS_ZEROS)


def _too_deep() -> ProtocolError:
    # The id cannot be read from a frame that does not parse: the reply carries "id": null.
    return ProtocolError(INVALID_JSON, "frame is not valid JSON: nested too deeply")


def _loads_exact(text: str) -> Any:
    value = json.loads(text, parse_constant=_reject, parse_float=_finite_float)
    # The stdlib accepts escaped lone surrogates ("\ud800"), which cannot be written back as UTF-8.
    json.dumps(value, ensure_ascii=False).encode()
    return value


def _reject(token: str) -> Any:
    raise ValueError(token)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (kept exact by _loads_exact) are the one thing orjson cannot write.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --- reading fields -------------------------------------------------------------------------------------


class _Reader:
    """Typed access to the fields of one decoded object; every failure names the field."""

    __slots__ = ("command_id", "obj")

    def __init__(self, obj: Mapping[str, Any], command_id: CommandId | None) -> None:
        self.obj = obj
        self.command_id = command_id

    def error(self, message: str, code: int = INVALID_COMMAND) -> ProtocolError:
        return ProtocolError(code, message, command_id=self.command_id)

    def _required(self, name: str) -> Any:
        if name not in self.obj:
            raise self.error(f"missing field '{name}'")
        return self.obj[name]

    def req_str(self, name: str) -> str:
        value = self._required(name)
        if not isinstance(value, str) or not value:
            raise self.error(f"field '{name}' must be a non-empty string")
        return value

    def opt_str(self, name: str) -> str | None:
        value = self.obj.get(name)
        if value is not None and not isinstance(value, str):
            raise self.error(f"field '{name}' must be a string")
        return value

    def req_int(self, name: str, code: int = INVALID_COMMAND) -> int:
        value = self._required(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(f"field '{name}' must be an integer", code)
        return value

    def opt_int(self, name: str, code: int = INVALID_COMMAND) -> int | None:
        return None if self.obj.get(name) is None else self.req_int(name, code)

    def flag(self, name: str, default: bool) -> bool:
        value = self.obj.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"field '{name}' must be a boolean")
        return value

    def req_object(self, name: str, code: int = INVALID_COMMAND) -> JSONObject:
        value = self._required(name)
        if not isinstance(value, dict):
            raise self.error(f"field '{name}' must be a JSON object", code)
        return value

    def opt_object(self, name: str, code: int = INVALID_COMMAND) -> JSONObject | None:
        return None if self.obj.get(name) is None else self.req_object(name, code)


def _read_id(obj: Mapping[str, Any]) -> CommandId:
    if "id" not in obj:
        raise ProtocolError(INVALID_COMMAND, "missing field 'id'")
    value = obj["id"]
    if isinstance(value, bool) or not (
        (isinstance(value, int) and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER)
        or (isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH)
    ):
        raise ProtocolError(
            INVALID_COMMAND,
            f"field 'id' must be an integer within ±(2^53-1) or a string of 1 to {MAX_ID_LENGTH} characters",
        )
    return value


# --- commands -------------------------------------------------------------------------------------------


def _open(r: _Reader, command_id: CommandId) -> Open:
    name, sid = r.opt_str("name"), r.opt_str("sid")
    mode = r.obj.get("mode")
    if mode is None:
        mode = "open_or_create"
    elif mode not in _OPEN_MODES:
        raise r.error(f"field 'mode' must be one of {', '.join(_OPEN_MODES)}")
    if name is not None and sid is not None:
        raise r.error("give either field 'name' or field 'sid', not both")
    if sid is not None and mode == "create_new":
        raise r.error("field 'sid' cannot be used with mode create_new: the server assigns SIDs")
    if name is None and sid is None and mode != "create_new":
        raise r.error("missing field 'name' or 'sid'")
    return Open(
        id=command_id,
        name=name,
        sid=sid,
        mode=cast(OpenMode, mode),
        data=r.opt_object("data", INVALID_DATA),
        ttl=r.opt_int("ttl", INVALID_TTL),
        subscribe=r.flag("subscribe", default=True),
    )


def _fetch(r: _Reader, command_id: CommandId) -> Fetch:
    return Fetch(id=command_id, doc=r.req_str("doc"))


def _subscribe(r: _Reader, command_id: CommandId) -> Subscribe:
    return Subscribe(id=command_id, doc=r.req_str("doc"), revision=r.opt_str("revision"))


def _unsubscribe(r: _Reader, command_id: CommandId) -> Unsubscribe:
    return Unsubscribe(id=command_id, doc=r.req_str("doc"))


def _set(r: _Reader, command_id: CommandId) -> Set:
    return Set(
        id=command_id,
        doc=r.req_str("doc"),
        data=r.req_object("data", INVALID_DATA),
        if_match=r.opt_str("if_match"),
        ttl=r.opt_int("ttl", INVALID_TTL),
    )


def _update(r: _Reader, command_id: CommandId) -> Update:
    return Update(
        id=command_id,
        doc=r.req_str("doc"),
        data=r.req_object("data", INVALID_DATA),
        if_match=r.opt_str("if_match"),
        ttl=r.opt_int("ttl", INVALID_TTL),
    )


def _set_ttl(r: _Reader, command_id: CommandId) -> SetTtl:
    return SetTtl(id=command_id, doc=r.req_str("doc"), ttl=r.req_int("ttl", INVALID_TTL))


def _remove(r: _Reader, command_id: CommandId) -> Remove:
    return Remove(id=command_id, doc=r.req_str("doc"))


def _update_token(r: _Reader, command_id: CommandId) -> UpdateToken:
    return UpdateToken(id=command_id, token=r.req_str("token"))


def _ping(r: _Reader, command_id: CommandId) -> Ping:
    return Ping(id=command_id)


_DECODERS: Mapping[str, Callable[[_Reader, CommandId], Command]] = {
    Open.op: _open,
    Fetch.op: _fetch,
    Subscribe.op: _subscribe,
    Unsubscribe.op: _unsubscribe,
    Set.op: _set,
    Update.op: _update,
    SetTtl.op: _set_ttl,
    Remove.op: _remove,
    UpdateToken.op: _update_token,
    Ping.op: _ping,
}


def decode_command(frame: str | bytes) -> Command:
    """Decode one client frame into a command, or raise :class:`ProtocolError`.

    The error's ``command_id`` is set whenever the frame is an object with a valid ``id``, so the
    error reply can echo it; otherwise it is ``None``.
    """
    obj = _loads(frame)
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_COMMAND, "a command must be a JSON object")
    command_id = _read_id(obj)
    reader = _Reader(obj, command_id)
    op = reader.req_str("op")
    decoder = _DECODERS.get(op)
    if decoder is None:
        # Bounded and repr'd: the op is client text going into a message that may be logged.
        raise reader.error(f"unknown op {op[:32]!r}")
    return decoder(reader, command_id)


def encode_command(command: Command) -> bytes:
    """The frame for ``command`` (client side); optional fields that are ``None`` are left out."""
    body: dict[str, Any] = {"id": command.id, "op": command.op}
    for field in fields(command):
        value = getattr(command, field.name)
        if value is not None:
            body[field.name] = value
    return _dumps(body)


# --- replies and events ---------------------------------------------------------------------------------


def encode_reply(command_id: CommandId | None, result: Mapping[str, Any]) -> bytes:
    """``{"id": command_id, "ok": true, **result}``. ``result`` may hold ``orjson.Fragment`` values."""
    if not _RESERVED_REPLY_KEYS.isdisjoint(result):
        raise ValueError("a reply result may not use the keys id, ok or error")
    return _dumps({"id": command_id, "ok": True, **result})


def encode_error(command_id: CommandId | None, code: int, message: str, status: int) -> bytes:
    """``{"id": command_id, "ok": false, "error": {"code", "message", "status"}}``."""
    error = {"code": code, "message": message, "status": status}
    return orjson.dumps({"id": command_id, "ok": False, "error": error})


def encode_event(event: Event) -> bytes:
    """The push frame for ``event``. Encode once, then write the same bytes to every subscriber."""
    body: dict[str, Any]
    if isinstance(event, Updated):
        body = {"event": Updated.event, "document": event.document}
    elif isinstance(event, Removed):
        body = {
            "event": Removed.event,
            "sid": event.sid,
            "unique_name": event.unique_name,
            "revision": event.revision,
            "reason": event.reason,
        }
    elif isinstance(event, SubscriptionEnded):
        body = {
            "event": SubscriptionEnded.event,
            "sid": event.sid,
            "unique_name": event.unique_name,
            "error": {"code": event.code, "message": event.message, "status": event.status},
        }
    elif isinstance(event, Connected):
        body = {
            "event": Connected.event,
            "identity": event.identity,
            "service_sid": event.service_sid,
            "connection_id": event.connection_id,
        }
    else:
        body = {"event": TokenExpiring.event, "expires_in": event.expires_in}
    return _dumps(body)


def encode_server_message(message: ServerMessage) -> bytes:
    if isinstance(message, Reply):
        return encode_reply(message.id, message.result)
    if isinstance(message, ErrorReply):
        return encode_error(message.id, message.code, message.message, message.status)
    return encode_event(message)


# --- client side: decoding what the server sends --------------------------------------------------------


def decode_server_message(frame: str | bytes) -> ServerMessage:
    """Decode one server frame (client side), or raise :class:`ProtocolError`.

    Unknown events raise too; a client that wants forward compatibility ignores those errors.
    """
    obj = _loads(frame)
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_COMMAND, "a server message must be a JSON object")
    reader = _Reader(obj, None)
    if "event" in obj:
        return _decode_event(reader)
    command_id = None if obj.get("id") is None else _read_id(obj)
    ok = obj.get("ok")
    if ok is True:
        result = {k: v for k, v in obj.items() if k not in _RESERVED_REPLY_KEYS}
        return Reply(id=command_id, result=result)
    if ok is False:
        error = _Reader(reader.req_object("error"), command_id)
        return ErrorReply(
            id=command_id,
            code=error.req_int("code"),
            message=error.opt_str("message") or "",
            status=error.req_int("status"),
        )
    raise reader.error("a server message needs 'event', or 'ok' as a boolean")


def _decode_event(r: _Reader) -> Event:
    name = r.req_str("event")
    if name == Updated.event:
        # The document's inner shape is the server's contract; checking each field would only slow clients.
        return Updated(document=cast(UpdatedDocumentWire, r.req_object("document")))
    if name == Removed.event:
        reason = r.req_str("reason")
        if reason not in REMOVAL_REASONS:
            raise r.error(f"field 'reason' must be one of {', '.join(REMOVAL_REASONS)}")
        return Removed(
            sid=r.req_str("sid"),
            unique_name=r.opt_str("unique_name"),
            revision=r.opt_str("revision"),
            reason=reason,
        )
    if name == SubscriptionEnded.event:
        error = _Reader(r.req_object("error"), None)
        return SubscriptionEnded(
            sid=r.req_str("sid"),
            unique_name=r.opt_str("unique_name"),
            code=error.req_int("code"),
            message=error.opt_str("message") or "",
            status=error.req_int("status"),
        )
    if name == Connected.event:
        return Connected(
            identity=r.req_str("identity"),
            service_sid=r.req_str("service_sid"),
            connection_id=r.req_str("connection_id"),
        )
    if name == TokenExpiring.event:
        return TokenExpiring(expires_in=r.req_int("expires_in"))
    raise r.error(f"unknown event {name[:32]!r}")
