"""``parse_data`` keeps every number's value: the fast path (orjson) only for text without a run of
19 or more digits, where orjson is exact; the stdlib path for the rest.

The run check is a byte translation, not a regular expression (see ``validation``); these cases pin
it at its edges: 18 and 19 digits, the 64-bit limits on both sides, digits split by other bytes, and
runs inside strings (a false alarm, same answer).
"""

from __future__ import annotations

import json

import pytest

from protocol.codec import decode_command, has_long_digit_run
from sync_server.validation import parse_data

CASES = [
    '{"n":999999999999999999}',  # 18 digits: fast path
    '{"n":1000000000000000000}',  # 19 digits
    '{"n":18446744073709551615}',  # u64 max
    '{"n":18446744073709551616}',  # u64 max + 1: orjson would round it
    '{"n":-9223372036854775808}',  # i64 min
    '{"n":-9223372036854775809}',  # i64 min - 1
    '{"n":123456789012345678901234567890}',
    '{"f":0.12345678901234567890123}',  # a long fraction: the stdlib's float
    '{"f":1.5e-3,"g":12345678.123456789}',  # 17 and 9 digits, apart: fast path
    '{"s":"12345678901234567890123","n":1}',  # a run inside a string
    '{"a":[123456789,1234567890,12345678901]}',
]


@pytest.mark.parametrize("text", CASES)
def test_numbers_keep_the_value_the_stdlib_reads(text: str) -> None:
    expected = json.loads(text)
    stored = parse_data(text)
    assert json.loads(stored) == expected
    # Same type too: an integer never comes back as a float.
    assert [type(v) for v in json.loads(stored).values()] == [type(v) for v in expected.values()]


def test_a_twenty_digit_integer_keeps_its_digits_byte_for_byte() -> None:
    assert parse_data('{"n": 18446744073709551616}') == b'{"n":18446744073709551616}'
    assert parse_data(b'{"n": 99999999999999999999999}') == b'{"n":99999999999999999999999}'


@pytest.mark.parametrize("kind", [str, bytes])
def test_the_run_check_counts_ascii_digits_in_a_row(kind: type) -> None:
    def run(text: str) -> bool:
        return has_long_digit_run(text if kind is str else text.encode())

    assert not run("1" * 18) and run("1" * 19) and run("x" + "0" * 25 + "x")
    assert not run("123456789-123456789.123456789e123456789")  # long, but never 19 in a row
    assert not run("١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠")  # non-ASCII digits are no JSON digits
    assert not run("") and not run("\ud800" * 30 if kind is str else "")


def test_websocket_frames_keep_long_integers_exact() -> None:
    command = decode_command('{"id":1,"op":"set","doc":"d","data":{"n":18446744073709551616}}')
    assert command.data == {"n": 18446744073709551616}  # type: ignore[union-attr]
