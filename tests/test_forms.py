"""The form decoder gives exactly what ``parse_qs`` gives, on crafted and on random bodies."""

from __future__ import annotations

import random
from urllib.parse import parse_qs, quote

import pytest

from sync_server.rest.forms import _fast, decode_form


def reference(body: bytes) -> dict[str, str] | type[UnicodeDecodeError]:
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return UnicodeDecodeError
    return {key: values[-1] for key, values in fields.items()}


def ours(body: bytes) -> dict[str, str] | type[UnicodeDecodeError]:
    try:
        return decode_form(body)
    except UnicodeDecodeError:
        return UnicodeDecodeError


CRAFTED = [
    b"",
    b"&",
    b"&&a=1&&",
    b"a",
    b"a=",
    b"=a",
    b"=",
    b"a=1&a=2",
    b"a=1=2",
    b"a+b=c+d",
    b"a%2Bb=%2B",
    b"Data=" + quote('{"k": [1, 2.5, "\u00e9\u20ac\U0001f600"], "x": null}', safe="").encode(),
    b"Data=%7b%22a%22%3a1%7D",
    b"x=%",
    b"x=%4",
    b"x=%4G",
    b"x=%G4",
    b"x=100%",
    b"x=%%41",
    b"x=%2541",
    b"x=\\",
    b"x=\\x41",
    b"x=\\%41",
    b"x=%5C%5Cn",
    b"x=\\n\\t",
    b"x=%00",
    b"x=%FF",
    b"x=%C3",
    b"x=%C3%A9",
    b"x=%E2%82",
    b"x=\xc3\xa9%C3%A9",
    b"x=%C3\xa9",
    b"x=\xff",
    b"\xff=1",
    b"x=%ZZ%FF",
    b"x=%41;y=2",
    b"UniqueName=a%26b%3Dc&Data=%7B%7D",
]


@pytest.mark.parametrize("body", CRAFTED)
def test_crafted_bodies_decode_as_parse_qs_does(body: bytes) -> None:
    assert ours(body) == reference(body)


def test_random_bodies_decode_as_parse_qs_does() -> None:
    rng = random.Random(20261202)
    pieces = [
        "a", "Z", "0", "9", "f", "F", "g", "%", "%4", "%41", "%e9", "%C3%A9", "%E2%82%AC", "%FF", "%G",
        "+", "&", "=", "\\", "\\x", "é", "€", "😀", " ", ";", "%25", "%26", "%3D", "%2B", "%5C",
    ]  # fmt: skip
    raw = [piece.encode() for piece in pieces] + [b"\xa9", b"\xc3", b"\xff", b"\x80"]
    for _ in range(20_000):
        body = b"".join(rng.choice(raw) for _ in range(rng.randint(0, 12)))
        assert ours(body) == reference(body), body


def test_a_document_body_takes_the_fast_path() -> None:
    # No fallback for what clients send: a fallback would show as parse_qs's cost again.
    data = '{"list": [1, 2, 3], "text": "a & b = c + d", "pct": "100%"}'
    body = f"Data={quote(data, safe='')}&Ttl=60".encode()
    assert _fast(body) == decode_form(body) == {"Data": data, "Ttl": "60"}
