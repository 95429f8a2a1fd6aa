"""Decoding an ``application/x-www-form-urlencoded`` body, at C speed, exactly as ``parse_qs`` does.

Why not ``urllib.parse.parse_qs`` alone: its percent-decoding is a Python loop over every ``%XX``
escape, and a 1 KiB JSON document sent as ``Data=`` has hundreds of them (every quote, brace, comma
and colon), which made it about a third of the server's CPU per REST write. Here a field's escapes
are rewritten as the backslash escapes ``codecs.escape_decode`` understands (``%41`` → ``\\x41``, a
literal backslash doubled first) and decoded in one C call. Any escape that is not ``%`` and two hex
digits makes ``escape_decode`` fail, and the whole body is then decoded by ``parse_qs`` itself, whose
answer for those (the ``%`` kept literally) is the one this module must give: the fast path only
ever handles bodies on which both give the same result (tests/test_forms.py compares them).

Contract of :func:`decode_form`: the same dict as ``{k: v[-1] for k, v in parse_qs(body.decode(),
keep_blank_values=True, errors="strict").items()}`` (fields split on ``&`` only, ``+`` is a space,
a field without ``=`` has the value ``""``, the last of repeated names wins), or
``UnicodeDecodeError`` where that raises it: the body, or a decoded escape, is not UTF-8.
"""

from __future__ import annotations

import codecs
from urllib.parse import parse_qs


def decode_form(body: bytes) -> dict[str, str]:
    """The form's fields (see the module's contract); ``UnicodeDecodeError`` for a body that is not UTF-8."""
    if not body.isascii():
        # The body itself must be UTF-8 first: decoded escapes next to a stray byte could make a
        # valid sequence out of an invalid body ("%C3" then a raw 0xA9).
        body.decode()
    try:
        return _fast(body)
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise
        fields = parse_qs(body.decode(), keep_blank_values=True, errors="strict")
        return {key: values[-1] for key, values in fields.items()}


def _fast(body: bytes) -> dict[str, str]:
    """Raises ``ValueError`` (not a ``UnicodeDecodeError``) for an escape it cannot decode."""
    form: dict[str, str] = {}
    for field in body.split(b"&"):
        if not field:
            continue
        name, _, value = field.partition(b"=")
        form[_unquote(name)] = _unquote(value)
    return form


def _unquote(raw: bytes) -> str:
    raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = codecs.escape_decode(raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    return raw.decode()
