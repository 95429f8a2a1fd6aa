"""The native websocket protocol: commands, replies, events, close codes and the rate limiter, no sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import protocol
from protocol import (
    CLOSE_CODES,
    CloseCode,
    Command,
    Connected,
    ErrorReply,
    Fetch,
    Open,
    Ping,
    ProtocolError,
    RateLimiter,
    Reconnect,
    Remove,
    Removed,
    Reply,
    Set,
    SetTtl,
    Subscribe,
    TokenExpiring,
    Unsubscribe,
    Update,
    Updated,
    UpdatedDocumentWire,
    UpdateToken,
    decode_command,
    decode_server_message,
    encode_command,
    encode_error,
    encode_event,
    encode_reply,
    encode_server_message,
    reconnect_policy,
)

ROOT = Path(__file__).resolve().parent.parent


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def refused(raw: str | bytes, code: int = 20001) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_command(raw)
    assert info.value.code == code
    assert info.value.status == 400
    return info.value


DOCUMENT: UpdatedDocumentWire = {
    "sid": "ET" + "0" * 32,
    "unique_name": "board",
    "revision": "1f",
    "previous_revision": "1e",
    "data": {"x": 1, "list": [1, 2], "empty": []},
    "date_created": "2026-01-02T03:04:05Z",
    "date_updated": "2026-01-02T03:04:06Z",
    "date_expires": None,
    "created_by": "alice",
}


# --- the public surface ---------------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert sorted(protocol.__all__) == sorted(
        [
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
    )
    for name in protocol.__all__:
        assert hasattr(protocol, name), name


def test_protocol_stands_alone() -> None:
    """Importing the package pulls in no server, web framework, Redis, asyncio or socket library."""
    code = "import sys, protocol; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    forbidden = ("starlette", "redis", "websockets", "asyncio", "sync_server", "socket", "uvicorn")
    assert [m for m in loaded if m.split(".")[0] in forbidden] == []


# --- commands: round trips ------------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Open(id=1, name="board"),
    Open(id="a", sid="ET" + "1" * 32, mode="open_existing", subscribe=False),
    Open(id=2, mode="create_new", data={"a": [1, {"b": None}]}, ttl=60),
    Open(id=3, name="n", mode="create_new", data={}, ttl=0, subscribe=True),
    Fetch(id=4, doc="board"),
    Subscribe(id=5, doc="board"),
    Subscribe(id=6, doc="ET" + "2" * 32, revision="1a"),
    Unsubscribe(id=7, doc="board"),
    Set(id=8, doc="board", data={"x": 1}),
    Set(id=9, doc="board", data={"x": "é"}, if_match="1a", ttl=3600),
    Update(id=10, doc="board", data={"y": 2.5}),
    Update(id="u-11", doc="board", data={"y": True}, if_match="0", ttl=0),
    SetTtl(id=12, doc="board", ttl=86400),
    Remove(id=13, doc="board"),
    UpdateToken(id=14, token="eyJ.eyJ.sig"),
    Ping(id=15),
    Ping(id=-(2**53 - 1)),
    Ping(id="x" * 64),
]


@pytest.mark.parametrize("command", COMMANDS, ids=repr)
def test_command_round_trip(command: Command) -> None:
    encoded = encode_command(command)
    assert decode_command(encoded) == command
    assert decode_command(encoded.decode()) == command
    assert b" " not in encoded.replace(b"\xc3\xa9", b"")  # compact


def test_commands_from_literal_frames() -> None:
    assert decode_command('{"id":1,"op":"open","name":"b"}') == Open(
        id=1, name="b", sid=None, mode="open_or_create", data=None, ttl=None, subscribe=True
    )
    assert decode_command('{"op":"set","doc":"b","data":{"k":[]},"id":"z"}') == Set(
        id="z", doc="b", data={"k": []}
    )
    assert decode_command('{"id":2,"op":"ping"}') == Ping(id=2)


def test_null_is_absent_for_optional_fields() -> None:
    cmd = decode_command(
        frame(id=1, op="open", name="b", sid=None, mode=None, data=None, ttl=None, subscribe=None)
    )
    assert cmd == Open(id=1, name="b")
    assert decode_command(frame(id=1, op="set", doc="b", data={}, if_match=None, ttl=None)) == Set(
        id=1, doc="b", data={}
    )
    assert decode_command(frame(id=1, op="subscribe", doc="b", revision=None)) == Subscribe(id=1, doc="b")


def test_unknown_fields_are_ignored() -> None:
    assert decode_command(frame(id=1, op="fetch", doc="b", future=True, extra={"x": 1})) == Fetch(
        id=1, doc="b"
    )


def test_big_integers_in_data_stay_exact() -> None:
    big = 123456789012345678901234567890
    raw = b'{"id":1,"op":"set","doc":"b","data":{"n":%d,"m":-%d,"f":1.5}}' % (big, big)
    cmd = decode_command(raw)
    assert isinstance(cmd, Set)
    assert cmd.data == {"n": big, "m": -big, "f": 1.5}
    assert decode_command(encode_command(cmd)) == cmd


def test_long_digit_runs_inside_strings_decode_normally() -> None:
    cmd = decode_command(frame(id=1, op="set", doc="b", data={"phone": "+4412345678901234567890"}))
    assert isinstance(cmd, Set) and cmd.data == {"phone": "+4412345678901234567890"}


def test_update_token_repr_hides_the_token() -> None:
    assert "secret-token" not in repr(UpdateToken(id=1, token="secret-token"))


# --- commands: refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "{",
        '{"id":1,"op":"ping"} trailing',
        '{"id":1,"op":"ping",}',
        '{"id":NaN,"op":"ping"}',
        '{"id":1,"op":"set","doc":"b","data":{"x":Infinity}}',
        '{"id":1,"op":"set","doc":"b","data":{"x":1e400}}',
        b"\xff\xfe{}",
        b'{"id":1,"op":"fetch","doc":"\xc3"}',  # truncated UTF-8 sequence
        '{"id":1,"op":"fetch","doc":"\ud800"}',  # lone surrogate in a str frame
        '{"id":1,"op":"fetch","doc":"\\ud800"}',  # escaped lone surrogate
        '{"id":1,"op":"fetch","doc":"\\ud800","n":12345678901234567890123}',  # ... on the exact path
        '{"id":1,"op":"fetch","doc":"\ud800","n":12345678901234567890123}',
        b'{"id":1,"op":"fetch","doc":"\xc3","n":12345678901234567890123}',
    ],
)
def test_not_json(raw: str | bytes) -> None:
    err = refused(raw)
    assert err.command_id is None
    assert "JSON" in err.message


@pytest.mark.parametrize("raw", ["[]", '[{"id":1,"op":"ping"}]', '"ping"', "42", "null", "true"])
def test_not_an_object(raw: str) -> None:
    assert refused(raw).command_id is None


@pytest.mark.parametrize(
    "bad_id", [None, True, False, 1.0, 1.5, "", "x" * 65, [1], {"a": 1}, 2**53, -(2**53)]
)
def test_bad_id(bad_id: object) -> None:
    err = refused(frame(id=bad_id, op="ping"))
    assert err.command_id is None
    assert "'id'" in err.message


def test_missing_id() -> None:
    err = refused('{"op":"ping"}')
    assert (err.command_id, err.message) == (None, "missing field 'id'")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "missing field 'op'"),
        ({"op": None}, "field 'op' must be a non-empty string"),
        ({"op": 3}, "field 'op' must be a non-empty string"),
        ({"op": "explode"}, "unknown op 'explode'"),
        ({"op": "PING"}, "unknown op 'PING'"),
    ],
)
def test_bad_op_echoes_the_id(fields: dict[str, Any], message: str) -> None:
    err = refused(frame(id="c-1", **fields))
    assert (err.command_id, err.message) == ("c-1", message)


def test_unknown_op_is_truncated_in_the_message() -> None:
    assert len(refused(frame(id=1, op="x" * 10_000)).message) < 60


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        # missing required fields
        ({"op": "fetch"}, 20001, "doc"),
        ({"op": "subscribe"}, 20001, "doc"),
        ({"op": "unsubscribe"}, 20001, "doc"),
        ({"op": "set", "data": {}}, 20001, "doc"),
        ({"op": "set", "doc": "b"}, 20001, "data"),
        ({"op": "update", "doc": "b"}, 20001, "data"),
        ({"op": "set_ttl", "doc": "b"}, 20001, "ttl"),
        ({"op": "remove"}, 20001, "doc"),
        ({"op": "update_token"}, 20001, "token"),
        ({"op": "open"}, 20001, "name"),
        ({"op": "open", "mode": "open_existing"}, 20001, "sid"),
        # mistyped doc / token / strings
        ({"op": "fetch", "doc": ""}, 20001, "doc"),
        ({"op": "fetch", "doc": None}, 20001, "doc"),
        ({"op": "fetch", "doc": 12}, 20001, "doc"),
        ({"op": "remove", "doc": ["b"]}, 20001, "doc"),
        ({"op": "update_token", "token": ""}, 20001, "token"),
        ({"op": "update_token", "token": {"jwt": "x"}}, 20001, "token"),
        ({"op": "subscribe", "doc": "b", "revision": 31}, 20001, "revision"),
        ({"op": "set", "doc": "b", "data": {}, "if_match": 0}, 20001, "if_match"),
        ({"op": "update", "doc": "b", "data": {}, "if_match": True}, 20001, "if_match"),
        ({"op": "open", "name": 5}, 20001, "name"),
        ({"op": "open", "sid": 5, "mode": "open_existing"}, 20001, "sid"),
        # data must be an object
        ({"op": "set", "doc": "b", "data": None}, 54101, "data"),
        ({"op": "set", "doc": "b", "data": []}, 54101, "data"),
        ({"op": "set", "doc": "b", "data": "{}"}, 54101, "data"),
        ({"op": "update", "doc": "b", "data": 1}, 54101, "data"),
        ({"op": "open", "name": "b", "data": [1]}, 54101, "data"),
        # ttl must be an int, and a bool is not one
        ({"op": "set", "doc": "b", "data": {}, "ttl": True}, 54011, "ttl"),
        ({"op": "set", "doc": "b", "data": {}, "ttl": 1.5}, 54011, "ttl"),
        ({"op": "update", "doc": "b", "data": {}, "ttl": "60"}, 54011, "ttl"),
        ({"op": "set_ttl", "doc": "b", "ttl": False}, 54011, "ttl"),
        ({"op": "set_ttl", "doc": "b", "ttl": None}, 54011, "ttl"),
        ({"op": "set_ttl", "doc": "b", "ttl": 60.0}, 54011, "ttl"),
        ({"op": "open", "name": "b", "ttl": True}, 54011, "ttl"),
        # open's own rules
        ({"op": "open", "name": "b", "subscribe": "yes"}, 20001, "subscribe"),
        ({"op": "open", "name": "b", "subscribe": 1}, 20001, "subscribe"),
        ({"op": "open", "name": "b", "mode": "create"}, 20001, "mode"),
        ({"op": "open", "name": "b", "mode": ["create_new"]}, 20001, "mode"),
        ({"op": "open", "name": "b", "sid": "ET" + "0" * 32}, 20001, "sid"),
        ({"op": "open", "sid": "ET" + "0" * 32, "mode": "create_new"}, 20001, "sid"),
    ],
)
def test_bad_fields(fields: dict[str, Any], code: int, field: str) -> None:
    err = refused(frame(id=77, **fields), code)
    assert err.command_id == 77
    assert f"'{field}'" in err.message


def test_open_modes() -> None:
    assert decode_command(frame(id=1, op="open", mode="create_new")) == Open(id=1, mode="create_new")
    sid = "ET" + "0" * 32
    assert decode_command(frame(id=1, op="open", sid=sid)) == Open(id=1, sid=sid)
    for mode in ("open_or_create", "open_existing", "create_new"):
        cmd = decode_command(frame(id=1, op="open", name="b", mode=mode))
        assert isinstance(cmd, Open) and cmd.mode == mode


def test_error_message_never_quotes_a_token() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQiOjF9.c2ln"
    for raw in (
        '{"id":1,"op":"update_token","token":"' + token + '"',  # not JSON
        '{"id":1,"op":"update_token","token":"' + token + '",x}',
    ):
        assert token not in refused(raw).message


# --- replies and events ---------------------------------------------------------------------------------


def test_encode_reply() -> None:
    assert encode_reply(1, {}) == b'{"id":1,"ok":true}'
    assert encode_reply("a", {"unchanged": True}) == b'{"id":"a","ok":true,"unchanged":true}'
    assert orjson.loads(encode_reply(3, {"document": DOCUMENT, "created": False})) == {
        "id": 3,
        "ok": True,
        "document": DOCUMENT,
        "created": False,
    }


@pytest.mark.parametrize("key", ["id", "ok", "error"])
def test_encode_reply_refuses_reserved_keys(key: str) -> None:
    with pytest.raises(ValueError):
        encode_reply(1, {key: 1})


def test_encode_error() -> None:
    assert encode_error(7, 54103, "Revision mismatch", 412) == (
        b'{"id":7,"ok":false,"error":{"code":54103,"message":"Revision mismatch","status":412}}'
    )
    assert orjson.loads(encode_error(None, 20001, "bad", 400))["id"] is None


def test_reply_values_may_be_preencoded_fragments() -> None:
    stored = b'{"n":123456789012345678901234567890,"empty":[]}'
    doc = {**DOCUMENT, "data": orjson.Fragment(stored)}
    out = encode_reply(1, {"document": doc})
    assert b'"data":' + stored in out
    assert json.loads(out)["document"]["data"]["n"] == 123456789012345678901234567890


def test_encode_events() -> None:
    assert encode_event(Connected("alice", "IS" + "0" * 32, "c1")) == (
        b'{"event":"connected","identity":"alice","service_sid":"IS' + b"0" * 32 + b'","connection_id":"c1"}'
    )
    assert orjson.loads(encode_event(Updated(DOCUMENT))) == {"event": "updated", "document": DOCUMENT}
    assert encode_event(Removed("ET1", None, "2", "expired")) == (
        b'{"event":"removed","sid":"ET1","unique_name":null,"revision":"2","reason":"expired"}'
    )
    assert encode_event(TokenExpiring(30)) == b'{"event":"token_expiring","expires_in":30}'


def test_updated_event_with_fragment_data_is_spliced_verbatim() -> None:
    stored = b'{"z":1,"a":[]}'  # key order and empty arrays survive: nothing re-parses it
    out = encode_event(Updated({**DOCUMENT, "data": orjson.Fragment(stored)}))
    assert b'"data":{"z":1,"a":[]}' in out


SERVER_MESSAGES = [
    Reply(1, {}),
    Reply("q", {"document": DOCUMENT, "created": True}),
    Reply(2, {"unchanged": True}),
    Reply(None, {}),
    ErrorReply(3, 54100, "Document not found", 404),
    ErrorReply(None, 20001, "a command must be a JSON object", 400),
    Connected("alice", "IS" + "0" * 32, "conn-1"),
    Updated(DOCUMENT),
    Removed("ET" + "0" * 32, "board", "20", "deleted"),
    Removed("ET" + "0" * 32, None, "21", "service_deleted"),
    TokenExpiring(60),
]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=repr)
def test_server_message_round_trip(message: Any) -> None:
    assert decode_server_message(encode_server_message(message)) == message


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        "[]",
        "{}",
        '{"id":1}',
        '{"id":1,"ok":"yes"}',
        '{"id":1,"ok":false}',
        '{"id":1,"ok":false,"error":{"message":"x","status":400}}',
        '{"event":"mystery"}',
        '{"event":"updated"}',
        '{"event":"updated","document":[]}',
        '{"event":"removed","sid":"ET1","revision":"1","reason":"vanished"}',
        '{"event":"token_expiring","expires_in":"soon"}',
        '{"event":"connected","identity":"a","service_sid":"IS"}',
    ],
)
def test_bad_server_messages(raw: str) -> None:
    with pytest.raises(ProtocolError):
        decode_server_message(raw)


# --- close codes ----------------------------------------------------------------------------------------


def test_close_code_numbers() -> None:
    assert {c.name: c.value for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "ABNORMAL": 1006,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "INVALID_TOKEN": 4401,
        "FORBIDDEN": 4403,
        "TOKEN_EXPIRED": 4410,
        "RATE_LIMITED": 4429,
        "TOO_SLOW": 4508,
    }
    assert set(CLOSE_CODES) == set(CloseCode)
    assert all(info.meaning for info in CLOSE_CODES.values())


@pytest.mark.parametrize(
    ("code", "policy"),
    [
        (1000, Reconnect.NO),
        (1001, Reconnect.YES),
        (1006, Reconnect.YES),
        (1008, Reconnect.NO),
        (1009, Reconnect.NO),
        (1011, Reconnect.YES),
        (4401, Reconnect.NO),
        (4403, Reconnect.NO),
        (4410, Reconnect.NEW_TOKEN),
        (4429, Reconnect.BACKOFF),
        (4508, Reconnect.YES),
        # not listed: ranges decide
        (4599, Reconnect.YES),
        (4404, Reconnect.NO),
        (4000, Reconnect.NO),
        (1012, Reconnect.BACKOFF),
        (1013, Reconnect.BACKOFF),
        (3000, Reconnect.BACKOFF),
    ],
)
def test_reconnect_policy(code: int, policy: Reconnect) -> None:
    assert reconnect_policy(code) is policy


def test_readme_lists_every_close_code() -> None:
    readme = (ROOT / "protocol" / "README.md").read_text()
    for code in CloseCode:
        assert f"| {code.value} |" in readme, code


# --- rate limiter ---------------------------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_refills() -> None:
    limiter = RateLimiter(rate=10, burst=3)
    assert [limiter.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert not limiter.allow(100.05)  # half a token
    assert limiter.allow(100.1)
    assert not limiter.allow(100.1)


def test_rate_limiter_caps_at_burst() -> None:
    limiter = RateLimiter(rate=100, burst=2)
    assert limiter.allow(0.0)
    # An hour idle still buys only `burst` commands.
    assert [limiter.allow(3600.0) for _ in range(3)] == [True, True, False]


def test_rate_limiter_sustained_rate() -> None:
    limiter = RateLimiter(rate=5, burst=1)
    allowed = sum(limiter.allow(t / 100) for t in range(1000))  # 10 s, polled at 100 Hz
    assert 50 <= allowed <= 51


def test_rate_limiter_ignores_a_clock_stepping_back() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allow(50.0)
    assert not limiter.allow(10.0)
    assert not limiter.allow(50.5)  # going back did not reset the reference point
    assert limiter.allow(51.0)


def test_rate_limiter_cost() -> None:
    limiter = RateLimiter(rate=1, burst=5)
    assert limiter.allow(0.0, cost=4)
    assert not limiter.allow(0.0, cost=2)  # refused requests spend nothing
    assert limiter.allow(0.0, cost=1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0), (1, 0.5)])
def test_rate_limiter_rejects_bad_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)
