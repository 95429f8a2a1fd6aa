"""The Twilsock endpoint over a real websocket to a real server, spoken frame by frame."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from sync_server.gateway import twilsock_codec as codec
from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
)
from tests.support.realtime import BASIC_HEADER
from tests.support.realtime import ws_url as native_url
from tests.support.twilsock import TwilsockPeer as Peer

AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
BASIC = {"Authorization": BASIC_HEADER}


@pytest.fixture(scope="module")
def service(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/v1/Services", data={"FriendlyName": "twilsock"}, auth=AUTH)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


def ws_url(server: ServerProcess) -> str:
    return server.base_url.replace("http://", "ws://") + "/v3/wsconnect"


@pytest.fixture
def peer(server: ServerProcess, service: str) -> Iterator[Peer]:
    with connect(ws_url(server)) as ws:
        p = Peer(ws)
        token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "alice", service)
        reply = p.reply_to(p.send({"method": "init", "token": token}))
        assert reply.header["status"]["code"] == 200
        yield p


def test_a_bad_token_is_refused_with_401(server: ServerProcess) -> None:
    with connect(ws_url(server)) as ws:
        p = Peer(ws)
        reply = p.reply_to(p.send({"method": "init", "token": "nope"}))
        assert reply.header["status"]["code"] == 401
        assert reply.header["status"]["errorCode"] == 20101


def test_errors_are_replies_and_the_socket_stays_open(peer: Peer) -> None:
    assert peer.request("GET", "/v3/Lists/x").header["http_status"]["code"] == 404
    missing = peer.request("GET", "/v3/Documents/nothing-here")
    assert missing.header["http_status"]["code"] == 404
    assert codec.json_payload(missing)["code"] == 54100
    assert peer.request("POST", "/v3/Documents", {"data": [1]}).header["http_status"]["code"] == 400
    ack = peer.send({"method": "reply", "status": {"code": 200, "status": "OK"}})
    assert ack
    unknown = peer.reply_to(peer.send({"method": "bogus"}))
    assert unknown.header["status"]["code"] == 400
    created = peer.request("POST", "/v3/Documents", {"data": {"a": 1}})
    assert created.header["http_status"]["code"] == 201


def test_write_if_match_and_delete(peer: Peer) -> None:
    name = "doc-" + secrets.token_hex(4)
    created = codec.json_payload(peer.request("POST", "/v3/Documents", {"unique_name": name, "data": {}}))
    assert created["last_event_id"] == 0
    path = created["url"].removeprefix("https://cds.example")
    duplicate = peer.request("POST", "/v3/Documents", {"unique_name": name})
    assert duplicate.header["http_status"]["code"] == 409
    written = codec.json_payload(peer.request("POST", path, {"data": {"n": 1}}, **{"If-Match": "0"}))
    assert (written["revision"], written["last_event_id"]) == ("1", 1)
    stale = peer.request("POST", path, {"data": {"n": 2}}, **{"If-Match": "0"})
    assert stale.header["http_status"]["code"] == 412
    assert peer.request("DELETE", path).header["http_status"]["code"] == 204
    assert peer.request("GET", path).header["http_status"]["code"] == 404


def test_subscribe_replays_what_the_client_missed(server: ServerProcess, service: str, peer: Peer) -> None:
    name = "doc-" + secrets.token_hex(4)
    rest = f"{server.base_url}/v1/Services/{service}/Documents"
    sid = httpx.post(rest, data={"UniqueName": name, "Data": '{"v":0}'}, auth=AUTH).json()["sid"]
    for value in (1, 2):
        httpx.post(f"{rest}/{sid}", data={"Data": f'{{"v":{value}}}'}, auth=AUTH).raise_for_status()
    request = {"object_sid": sid, "object_type": "document", "last_event_id": 0}
    body = {"event_protocol_version": 4, "action": "establish", "correlation_id": 7, "requests": [request]}
    reply = peer.request("POST", "/v4/Subscriptions", body)
    assert reply.header["http_status"]["code"] == 202
    established = peer.notification()
    assert established["event_type"] == "subscription_established"
    assert established["correlation_id"] == 7
    assert established["event"]["last_event_id"] == 2
    replay = peer.notification()
    assert replay["event_type"] == "document_updated"
    assert (replay["event"]["id"], replay["event"]["document_data"]) == (2, {"v": 2})
    httpx.post(f"{rest}/{sid}", data={"Data": '{"v":3}'}, auth=AUTH).raise_for_status()
    live = peer.notification()
    assert (live["event"]["id"], live["event"]["document_revision"]) == (3, "3")
    httpx.delete(f"{rest}/{sid}", auth=AUTH).raise_for_status()
    assert peer.notification() == {"event_type": "document_removed", "event": {"document_sid": sid}}


def test_subscribing_to_a_missing_document_fails_with_404(peer: Peer) -> None:
    sid = "ET" + "f" * 32
    request = {"object_sid": sid, "object_type": "document", "last_event_id": 0}
    body = {"action": "establish", "correlation_id": 1, "requests": [request]}
    assert peer.request("POST", "/v4/Subscriptions", body).header["http_status"]["code"] == 202
    failed = peer.notification()
    assert failed["event_type"] == "subscription_failed"
    assert failed["event"]["error"]["status"] == 404


def test_native_and_twilsock_subscribers_of_one_document_each_get_their_own_frames(
    server: ServerProcess, service: str, peer: Peer
) -> None:
    # One channel, subscribers of both protocols: the fan-out loop switches frames between them.
    name = "mixed-" + secrets.token_hex(4)
    rest = f"{server.base_url}/v1/Services/{service}/Documents"
    sid = httpx.post(rest, data={"UniqueName": name, "Data": '{"v":0}'}, auth=AUTH).json()["sid"]
    request = {"object_sid": sid, "object_type": "document", "last_event_id": 0}
    body = {"event_protocol_version": 4, "action": "establish", "correlation_id": 1, "requests": [request]}
    natives = []
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            ws = stack.enter_context(connect(native_url(server, service=service), additional_headers=BASIC))
            assert json.loads(ws.recv(timeout=5))["event"] == "connected"
            ws.send(json.dumps({"id": 1, "op": "subscribe", "doc": sid}))
            assert json.loads(ws.recv(timeout=5))["ok"] is True
            natives.append(ws)
        assert peer.request("POST", "/v4/Subscriptions", body).header["http_status"]["code"] == 202
        assert peer.notification()["event_type"] == "subscription_established"
        for value in (1, 2, 3):
            httpx.post(f"{rest}/{sid}", data={"Data": f'{{"v":{value}}}'}, auth=AUTH).raise_for_status()
        seen = [peer.notification() for _ in range(3)]
        assert [(n["event_type"], n["event"]["document_data"]) for n in seen] == [
            ("document_updated", {"v": v}) for v in (1, 2, 3)
        ]
        for ws in natives:
            events = [json.loads(ws.recv(timeout=5)) for _ in range(3)]
            assert [(e["event"], e["document"]["revision"], e["document"]["data"]) for e in events] == [
                ("updated", str(v), {"v": v}) for v in (1, 2, 3)
            ]
