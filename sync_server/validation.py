"""Input rules shared by REST and the websocket protocols, raising the Twilio error of each rule."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from protocol.codec import has_long_digit_run
from sync_server import errors
from sync_server.ids import SID_SHAPE

MAX_DATA_BYTES = 16 * 1024
MAX_DATA_DEPTH = 64
"""Deepest nesting of objects and arrays in ``Data``, the data object itself being level 1
(``{}`` is 1, ``{"a": [{}]}`` is 3). Far below what parsers choke on (orjson writes at most 254
levels, Python's json about 1,000, orjson reads 1,024), so whatever is stored every client can
read and write back; no real document needs more."""
MAX_TTL = 31_536_000
MAX_UNIQUE_NAME = 320
MAX_IDENTITY = 256


# orjson keeps integers exactly only within 64 bits and silently turns longer ones into floats
# (123456789012345678901234567890 -> 1.2345678901234568e+29). Any run of 19 or more digits may be
# such an integer (or a long fraction), so that text takes the exact stdlib path. A false alarm
# (digits inside a string) only costs speed. (The check was a regular expression once: 18 µs of a
# REST write's ~200 on a 1 KiB document, against under 2 for has_long_digit_run.)

# For the depth walk: a JSON string, the bytes that are neither brackets nor quotes, and the map
# of both kinds of brackets onto one (only nesting matters, and the text is valid JSON).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'{}[]"')
_SQUARE = bytes.maketrans(b"{}", b"[]")


def _invalid_json(reason: str) -> errors.ValidationError:
    return errors.InvalidJson(f"Invalid JSON in Data: {reason}")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e400 is valid JSON grammar but no client can hold it; stored as "Infinity" it would make
    # every later response invalid JSON.
    if math.isinf(value):
        raise ValueError(text)
    return value


def parse_data(text: str | bytes) -> bytes:
    """Parses the ``Data`` of a request into canonical compact JSON (UTF-8), the form that is stored.

    Integers of any size keep their exact value. Raises 54008 for text that is not JSON (or holds
    a number no double can hold, or an unpaired surrogate), 54101 for JSON that is not an object,
    54006 when the compact form is over 16 KiB.
    """
    raw = text.encode(errors="surrogatepass") if isinstance(text, str) else text
    if not has_long_digit_run(raw):
        try:
            return encode_data(orjson.loads(raw))
        except orjson.JSONDecodeError:
            pass  # maybe 1e400 or a lone surrogate escape: the stdlib path below says which
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError:
        # Malformed text, non-UTF-8 bytes, NaN/Infinity, 1e400 and integers beyond Python's
        # 4300-digit conversion limit.
        raise _invalid_json("the document data must be a JSON object") from None
    except RecursionError:
        raise _too_deep() from None
    return encode_data(value, compact=_stdlib_compact)


def _stdlib_compact(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        # An escaped unpaired surrogate ("\\ud800") parses but has no UTF-8 form.
        raise _invalid_json("a string holds an unpaired surrogate") from None
    except ValueError:
        raise _invalid_json("a number is out of range") from None
    except RecursionError:
        raise _too_deep() from None


def encode_data(value: Any, compact: Any = orjson.dumps) -> bytes:
    """Checks that ``value`` is a JSON object within the size and depth limits and returns its
    compact JSON. Every path that stores data (REST, both websocket protocols) comes through here."""
    if not isinstance(value, dict):
        raise errors.InvalidData("Invalid document data: the data must be a JSON object")
    try:
        encoded: bytes = compact(value)
    except (TypeError, ValueError, orjson.JSONEncodeError):
        # Non-string keys or integers orjson cannot hold (reached only from the websocket path),
        # or nesting beyond orjson's 254 levels.
        encoded = _stdlib_compact(value)
    check_data_size(len(encoded))
    check_data_depth(encoded)
    return encoded


def check_data_depth(encoded: bytes) -> None:
    """Raises 54008 when the compact JSON ``encoded`` nests deeper than :data:`MAX_DATA_DEPTH`.

    Every level opens with a bracket, so a text with at most that many opening brackets cannot be
    too deep: two C-speed counts settle almost every document. Otherwise only the brackets outside
    strings are kept and the innermost pairs removed round by round; what is left after
    ``MAX_DATA_DEPTH`` rounds nests deeper. Brackets inside strings must go first, as they could
    hide levels (``[["]",[],"["]]`` is three deep, its brackets alone two).
    """
    if encoded.count(b"{") + encoded.count(b"[") <= MAX_DATA_DEPTH:
        return
    brackets = _outside_brackets(encoded)
    for _ in range(MAX_DATA_DEPTH):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise _too_deep()


def _outside_brackets(encoded: bytes) -> bytes:
    """The brackets of ``encoded`` that are not inside a string, all as ``[`` and ``]``."""
    if b"\\" not in encoded:
        # Without escapes, a string holding no bracket is reduced to '""' here; if removing those
        # leaves no quote, no string held a bracket (each remaining pair was one string).
        kept = encoded.translate(_SQUARE, _NOT_BRACKETS_OR_QUOTES).replace(b'""', b"")
        if b'"' not in kept:
            return kept
    return _JSON_STRING.sub(b"", encoded).translate(_SQUARE, _NOT_BRACKETS)


def _too_deep() -> errors.ValidationError:
    return _invalid_json(f"objects and arrays may be nested at most {MAX_DATA_DEPTH} levels deep")


def check_data_size(size: int) -> None:
    if size > MAX_DATA_BYTES:
        raise errors.DataTooLarge(
            f"Document data is {size} bytes, over the limit of {MAX_DATA_BYTES} bytes of compact JSON"
        )


def whole_number(text: str) -> int | None:
    """The value of a form or query number: ASCII digits only (no sign, no fraction), else None.

    The length cap keeps ``int()`` away from Python's 4300-digit limit, whose ValueError would
    otherwise surface as a 500; no field this server reads needs more than 18 digits.
    """
    if not 1 <= len(text) <= 18 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_ttl(text: str) -> int:
    """A ``Ttl`` form value: a whole number of seconds, 0 (no expiry) to 31,536,000."""
    value = whole_number(text.strip())
    if value is None:
        raise _ttl_error()
    return check_ttl(value)


def check_ttl(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TTL:
        raise _ttl_error()
    return value


def _ttl_error() -> errors.ValidationError:
    return errors.InvalidTtl(f"Invalid Ttl: it must be a whole number of seconds from 0 to {MAX_TTL}")


def check_unique_name(name: str) -> str:
    """1 to 320 characters, not shaped like a SID (which would make ``/Documents/{Sid}`` ambiguous),
    and without a ``.`` or ``..`` path segment.

    HTTP stacks remove dot segments from a URL before sending it (RFC 3986 section 5.2.4; WHATWG
    URLs also decode ``%2e`` and split on ``\\``), and the helper libraries put the name into the
    path unencoded: ``documents("..").delete()`` would send ``DELETE /v1/Services/{Sid}``.
    """
    if not 1 <= len(name) <= MAX_UNIQUE_NAME or SID_SHAPE.fullmatch(name):
        raise errors.InvalidUniqueName(
            f"Invalid UniqueName: it must be 1 to {MAX_UNIQUE_NAME} characters and must not look like a SID"
        )
    if ("." in name or "%" in name) and _has_dot_segment(name):
        raise errors.InvalidUniqueName(
            "Invalid UniqueName: '.' and '..' may not be segments of it (between '/' or '\\')"
        )
    return name


_DOT_SEGMENTS = frozenset({".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"})


def _has_dot_segment(name: str) -> bool:
    segments = name.replace("\\", "/").split("/")
    return any(segment.lower() in _DOT_SEGMENTS for segment in segments)


def check_identity(identity: str) -> str:
    if not 1 <= len(identity) <= MAX_IDENTITY:
        raise errors.InvalidIdentity(f"Invalid identity: it must be 1 to {MAX_IDENTITY} characters")
    return identity


def normalize_revision(value: str) -> str:
    """An ``If-Match`` value as sent by the helpers: quoted (``"1a"``), weak (``W/"1a"``) or bare (``1a``)."""
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text or len(text) > 16 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise errors.InvalidIfMatch("Invalid If-Match: it must be a document revision")
    # Revisions are hex counters: leading zeros and case do not change which one is meant.
    return format(int(text, 16), "x")
