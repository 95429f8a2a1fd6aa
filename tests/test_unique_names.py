"""Unique names with ``.`` or ``..`` segments are refused (400/54302) on every path.

HTTP stacks remove dot segments from URLs, and the helper libraries put a document's name into the
path as it is: with the official ``twilio`` library, ``documents("..").delete()`` sends
``DELETE /v1/Services/{Sid}`` and deletes the whole service. Such a name must never exist.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from websockets.sync.client import connect

from sync_server import errors
from sync_server.gateway import twilsock_codec as codec
from sync_server.tokens import mint_access_token
from sync_server.validation import check_unique_name
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
)
from tests.support.realtime import BASIC_HEADER, Peer, ws_url

DOT_NAMES = [
    ".",
    "..",
    "a/../b",
    "./x",
    "x/.",
    "x/..",
    "../x",
    "a/./b",
    "%2e%2e",  # WHATWG URL parsers (Node, browsers) decode %2e in paths
    "x/%2E",
    ".%2e/y",
    "a\\..\\b",  # ... and treat a backslash as a slash
]
FINE_NAMES = ["...", ".hidden", "a.b", "..a", "a..", "a/.../b", "v1.2/notes", "%2e%2e%2e", "x/.y", "%2f"]


@pytest.mark.parametrize("name", DOT_NAMES)
def test_dot_segments_are_refused(name: str) -> None:
    with pytest.raises(errors.ValidationError) as info:
        check_unique_name(name)
    assert info.value.code == 54302
    assert info.value.status == 400


@pytest.mark.parametrize("name", FINE_NAMES)
def test_dots_that_are_not_segments_are_fine(name: str) -> None:
    assert check_unique_name(name) == name


# -- every path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "a/../b", "x/."])
async def test_rest_create_refuses(client: httpx.AsyncClient, service: str, name: str) -> None:
    response = await client.post(f"/v1/Services/{service}/Documents", data={"UniqueName": name, "Data": "{}"})
    assert response.status_code == 400
    assert response.json()["code"] == 54302
    listed = await client.get(f"/v1/Services/{service}/Documents")
    assert listed.json()["documents"] == []


@pytest.fixture(scope="module")
def rest_service(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/v1/Services", data={"FriendlyName": "dots"}, auth=server.auth)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


async def test_native_open_refuses(server: ServerProcess, rest_service: str) -> None:
    peer = await Peer.connect(ws_url(server, service=rest_service, identity="dots"))
    try:
        for mode in ("open_or_create", "create_new"):
            reply = await peer.command("open", name="..", mode=mode)
            assert reply["ok"] is False
            assert (reply["error"]["code"], reply["error"]["status"]) == (54302, 400)
    finally:
        await peer.close()


def test_twilsock_create_refuses(server: ServerProcess, rest_service: str) -> None:
    url = server.base_url.replace("http://", "ws://") + "/v3/wsconnect"
    token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "dots", rest_service)
    with connect(url) as ws:

        def call(header: dict[str, Any], payload: bytes = b"") -> codec.TwilsockFrame:
            message_id = codec.new_message_id()
            ws.send(codec.encode_frame({"id": message_id, **header}, payload))
            while True:
                data = ws.recv(timeout=10)
                assert isinstance(data, bytes)
                frame = codec.decode_frame(data)
                if frame.method == "reply" and frame.id == message_id:
                    return frame

        assert call({"method": "init", "token": token}).header["status"]["code"] == 200
        request = {
            "host": "cds.example",
            "path": "/v3/Documents",
            "method": "POST",
            "params": {},
            "headers": {},
        }
        header = {"method": "message", "active_grant": "data_sync", "http_request": request}
        reply = call(header, orjson.dumps({"unique_name": "a/../b", "data": {}}))
        assert reply.header["http_status"]["code"] == 400
        assert codec.json_payload(reply)["code"] == 54302


# -- the official library, which normalises dot segments ------------------------------------------------


@pytest.fixture
def twilio_service(server: ServerProcess) -> Iterator[tuple[Client, str]]:
    client = Client(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    client.sync.base_url = server.base_url
    service = client.sync.v1.services.create(friendly_name=f"dots-{uuid.uuid4().hex[:8]}")
    yield client, service.sid
    client.sync.v1.services(service.sid).delete()


@pytest.mark.parametrize("name", ["..", ".", "x/.."])
def test_twilio_library_cannot_create_a_name_that_would_address_the_service(
    twilio_service: tuple[Client, str], name: str
) -> None:
    client, sid = twilio_service
    documents = client.sync.v1.services(sid).documents
    kept = documents.create(unique_name="kept", data={"k": 1})
    with pytest.raises(TwilioRestException) as info:
        documents.create(unique_name=name, data={})
    assert (info.value.status, info.value.code) == (400, 54302)
    # The service and its documents are all still there.
    assert client.sync.v1.services(sid).fetch().sid == sid
    assert [doc.sid for doc in documents.list()] == [kept.sid]


def raw_request(server: ServerProcess, method: str, path: str) -> int:
    """A request whose path no client library rewrites; returns the status."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: {BASIC_HEADER}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def test_percent_encoded_dot_segments_name_nothing(server: ServerProcess, rest_service: str) -> None:
    for segment in ("%2e%2e", "%2E", ".%2e"):
        path = f"/v1/Services/{rest_service}/Documents/{segment}"
        assert raw_request(server, "GET", path) == 404
        assert raw_request(server, "DELETE", path) == 404
    fetched = httpx.get(f"{server.base_url}/v1/Services/{rest_service}", auth=server.auth)
    assert fetched.status_code == 200
