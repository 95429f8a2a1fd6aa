"""Data nested deeper than ``MAX_DATA_DEPTH`` is refused with 400/54008 on every path.

REST (create and update), the native protocol (``open``, ``set``, ``update``) and Twilsock (create
and update) all store data through ``validation.encode_data``; the frame codecs add only their
parser's own limit. Just at the limit is accepted everywhere; beyond it nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from protocol import ProtocolError, decode_command
from sync_server import errors
from sync_server.gateway import twilsock_codec as codec
from sync_server.tokens import mint_access_token
from sync_server.validation import MAX_DATA_DEPTH, check_data_depth, encode_data, parse_data
from tests.support.processes import TEST_ACCOUNT_SID, TEST_API_KEY_SECRET, TEST_API_KEY_SID, ServerProcess
from tests.support.realtime import Peer, ws_url

INVALID_JSON = (400, 54008)


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """An object ``depth`` levels deep (the object itself is level 1), alternating objects and arrays."""
    value: Any = leaf
    for level in range(depth - 1, 0, -1):
        value = {"k": value} if level % 2 == 0 else [value]
    return {"top": value}


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def deep_text(depth: int) -> str:
    """Text for depths no Python recursion could build or check: ``{"a":[[[…]]]}``."""
    return '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def refused_as_too_deep(call: Any, *args: Any) -> None:
    with pytest.raises(errors.ValidationError) as info:
        call(*args)
    assert info.value.code == errors.INVALID_JSON
    assert f"at most {MAX_DATA_DEPTH} levels" in info.value.message


# -- the rule, pure --------------------------------------------------------------------------------------


def test_the_helper_builds_the_depth_it_says() -> None:
    assert [depth_of(nested(d)) for d in (1, 2, 3, MAX_DATA_DEPTH)] == [1, 2, 3, MAX_DATA_DEPTH]


def test_the_limit_is_64_and_is_exact() -> None:
    assert MAX_DATA_DEPTH == 64
    assert encode_data(nested(MAX_DATA_DEPTH)) == orjson.dumps(nested(MAX_DATA_DEPTH))
    refused_as_too_deep(encode_data, nested(MAX_DATA_DEPTH + 1))
    assert parse_data(json.dumps(nested(MAX_DATA_DEPTH))) == orjson.dumps(nested(MAX_DATA_DEPTH))
    refused_as_too_deep(parse_data, json.dumps(nested(MAX_DATA_DEPTH + 1)))


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 200, 254, 255, 600, 950, 1024, 1025, 5000, 20000])
def test_every_depth_beyond_is_refused_without_a_recursion_error(depth: int) -> None:
    refused_as_too_deep(parse_data, deep_text(depth))
    refused_as_too_deep(parse_data, deep_text(depth).replace('"a":', '"n":123456789012345678901234,"a":'))


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 254, 255, 900])
def test_decoded_values_beyond_are_refused(depth: int) -> None:
    # What the websocket codecs hand over: values orjson cannot write back (over 254 levels) too.
    value = orjson.loads(deep_text(depth))
    refused_as_too_deep(encode_data, value)
    refused_as_too_deep(encode_data, {**value, "big": 2**70})  # the stdlib fallback path


def test_brackets_in_strings_neither_count_nor_hide_levels() -> None:
    # Many brackets, all inside strings: shallow, accepted.
    shallow = {"s": "[" * 500, "t": "{" * 500, "u": ['"]"', "\\[", "]}"] * 20}
    check_data_depth(orjson.dumps(shallow))
    # Strings whose brackets would cancel out real levels, if they were counted.
    hiding: Any = "x"
    for _ in range(MAX_DATA_DEPTH):
        hiding = ["]", hiding, "["]
    check_data_depth(orjson.dumps({"h": hiding[1]}))  # 64 levels with the top object
    refused_as_too_deep(check_data_depth, orjson.dumps({"h": hiding}))
    escaped = {"h": hiding, "esc": 'a "quoted" \\ ["'}
    refused_as_too_deep(check_data_depth, orjson.dumps(escaped))


def test_wide_documents_with_many_containers_are_accepted() -> None:
    wide = {"items": [{"id": i, "tags": ["a", "b"], "o": {"k": [1, {}]}} for i in range(150)]}
    assert encode_data(wide) == orjson.dumps(wide)


def test_a_frame_deeper_than_the_parser_reads_is_54008() -> None:
    for frame in ("[" * 2000 + "]" * 2000, '{"id":1,"op":"set","doc":"d","data":' + deep_text(1100) + "}"):
        with pytest.raises(ProtocolError) as info:
            decode_command(frame)
        assert (info.value.code, info.value.status, info.value.command_id) == (54008, 400, None)


# -- REST -------------------------------------------------------------------------------------------------


def rest_error(response: httpx.Response) -> tuple[int, int]:
    assert response.json()["status"] == response.status_code, response.text
    return response.status_code, response.json()["code"]


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 300, 1000, 3000])
async def test_rest_create_and_update_refuse_deep_data(
    client: httpx.AsyncClient, service: str, depth: int
) -> None:
    docs = f"/v1/Services/{service}/Documents"
    data = deep_text(depth)
    assert rest_error(await client.post(docs, data={"UniqueName": "deep", "Data": data})) == INVALID_JSON
    assert (await client.get(f"{docs}/deep")).status_code == 404
    assert (await client.post(docs, data={"UniqueName": "deep", "Data": "{}"})).status_code == 201
    assert rest_error(await client.post(f"{docs}/deep", data={"Data": data})) == INVALID_JSON
    kept = await client.get(f"{docs}/deep")
    assert (kept.json()["revision"], kept.json()["data"]) == ("0", {})


async def test_rest_accepts_data_at_the_limit(client: httpx.AsyncClient, service: str) -> None:
    docs = f"/v1/Services/{service}/Documents"
    at_limit = json.dumps(nested(MAX_DATA_DEPTH))
    created = await client.post(docs, data={"UniqueName": "at-limit", "Data": at_limit})
    assert created.status_code == 201, created.text
    assert created.json()["data"] == nested(MAX_DATA_DEPTH)
    updated = await client.post(f"{docs}/at-limit", data={"Data": at_limit})
    assert updated.status_code == 200, updated.text


# -- the native protocol ----------------------------------------------------------------------------------


def reply_error(reply: dict[str, Any]) -> tuple[int, int]:
    assert reply["ok"] is False, reply
    return reply["error"]["status"], reply["error"]["code"]


@pytest.fixture(scope="module")
def rest_service(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/v1/Services", data={"FriendlyName": "deep"}, auth=server.auth)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


async def test_native_open_set_and_update_refuse_deep_data(server: ServerProcess, rest_service: str) -> None:
    peer = await Peer.connect(ws_url(server, service=rest_service, identity="deep"))
    try:
        deep = orjson.loads(deep_text(MAX_DATA_DEPTH + 1))
        assert reply_error(await peer.command("open", name="ws-deep", data=deep)) == INVALID_JSON
        assert reply_error(await peer.command("open", mode="create_new", data=deep)) == INVALID_JSON
        opened = await peer.ok("open", name="ws-deep", data={"v": 0})
        assert opened["created"] is True
        for op in ("set", "update"):
            for data in (deep, orjson.loads(deep_text(900))):
                assert reply_error(await peer.command(op, doc="ws-deep", data=data)) == INVALID_JSON
        # Past the parser's own depth the frame cannot be read at all: still a reply, not a drop.
        raw = '{"id":"x","op":"set","doc":"ws-deep","data":' + deep_text(1100) + "}"
        await peer.ws.send(raw)
        await peer.wait_until(lambda p: any(f.get("id") is None and "error" in f for f in p.frames))
        unreadable = next(f for f in peer.frames if f.get("id") is None and "error" in f)
        assert reply_error(unreadable) == INVALID_JSON
        at_limit = nested(MAX_DATA_DEPTH)
        assert (await peer.ok("set", doc="ws-deep", data=at_limit))["document"]["data"] == at_limit
        fetched = await peer.ok("fetch", doc="ws-deep")
        assert fetched["document"]["revision"] == "1"
    finally:
        await peer.close()


# -- Twilsock ---------------------------------------------------------------------------------------------


class TwilsockPeer:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def call(self, header: dict[str, Any], payload: bytes = b"") -> codec.TwilsockFrame:
        message_id = codec.new_message_id()
        self.ws.send(codec.encode_frame({"id": message_id, **header}, payload))
        while True:
            data = self.ws.recv(timeout=10)
            assert isinstance(data, bytes)
            frame = codec.decode_frame(data)
            if frame.method == "reply" and frame.id == message_id:
                return frame

    def request(self, method: str, path: str, payload: bytes) -> tuple[int, Any]:
        request = {"host": "cds.example", "path": path, "method": method, "params": {}, "headers": {}}
        header = {"method": "message", "active_grant": "data_sync", "http_request": request}
        frame = self.call(header, payload)
        return frame.header["http_status"]["code"], codec.json_payload(frame)


@pytest.fixture
def twilsock(server: ServerProcess, rest_service: str) -> Iterator[TwilsockPeer]:
    url = server.base_url.replace("http://", "ws://") + "/v3/wsconnect"
    with connect(url) as ws:
        peer = TwilsockPeer(ws)
        token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "ts", rest_service)
        assert peer.call({"method": "init", "token": token}).header["status"]["code"] == 200
        yield peer


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 500, 1100])
def test_twilsock_create_and_update_refuse_deep_data(twilsock: TwilsockPeer, depth: int) -> None:
    deep = deep_text(depth).encode()
    name = f"ts-deep-{depth}"
    status, body = twilsock.request(
        "POST", "/v3/Documents", b'{"unique_name":"%s","data":%s}' % (name.encode(), deep)
    )
    assert (status, body["code"]) == INVALID_JSON, body
    status, created = twilsock.request(
        "POST", "/v3/Documents", orjson.dumps({"unique_name": name, "data": {}})
    )
    assert status == 201, created
    path = created["url"].removeprefix("https://cds.example")
    status, body = twilsock.request("POST", path, b'{"data":%s}' % deep)
    assert (status, body["code"]) == INVALID_JSON, body
    status, fetched = twilsock.request("GET", path, b"")
    assert (status, fetched["revision"]) == (200, "0")


def test_twilsock_accepts_data_at_the_limit(twilsock: TwilsockPeer) -> None:
    at_limit = nested(MAX_DATA_DEPTH)
    status, created = twilsock.request("POST", "/v3/Documents", orjson.dumps({"data": at_limit}))
    assert status == 201, created
    path = created["url"].removeprefix("https://cds.example")
    status, updated = twilsock.request("POST", path, orjson.dumps({"data": at_limit}))
    assert status == 200, updated
