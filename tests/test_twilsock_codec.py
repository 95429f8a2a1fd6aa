"""Twilsock framing and the HTTP-over-socket routes, without sockets."""

from __future__ import annotations

import orjson
import pytest

from sync_server import errors
from sync_server.events import DocumentEvent
from sync_server.gateway import twilsock_codec as codec
from sync_server.gateway import twilsock_routes as routes
from sync_server.gateway.twilsock import TwilsockSession
from sync_server.store.models import Document

SID = "ET" + "0" * 32
SERVICE = "IS" + "1" * 32


def sdk_packet(header: dict[str, object], payload: str = "") -> bytes:
    """What twilsock's ``Parser.createPacket`` sends (payload_size set, header length in bytes)."""
    header = dict(header, payload_size=len(payload.encode()))
    head = orjson.dumps(header).decode()
    return f"TWILSOCK V3.0 {len(head.encode())}\r\n{head}\r\n{payload}".encode()


def test_decodes_what_the_sdk_sends() -> None:
    body = '{"data":{"é":1}}'
    frame = codec.decode_frame(sdk_packet({"method": "message", "id": "TM1"}, body))
    assert frame.method == "message"
    assert frame.id == "TM1"
    assert codec.json_payload(frame) == {"data": {"é": 1}}


def test_decodes_a_frame_without_payload() -> None:
    frame = codec.decode_frame(sdk_packet({"method": "init", "id": "TM2", "token": "t"}))
    assert frame.payload == b""
    assert codec.json_payload(frame) is None


def test_the_raw_delete_body_is_tolerated() -> None:
    frame = codec.decode_frame(
        sdk_packet({"method": "message", "payload_type": "application/json"}, "data_sync")
    )
    assert frame.payload == b"data_sync"
    assert codec.json_payload(frame) is None


def test_encode_then_decode_round_trips() -> None:
    wire = codec.encode_frame({"method": "notification", "id": "TM3"}, b'{"a":[1,2]}')
    assert wire.startswith(b"TWILSOCK V3.0 ")
    frame = codec.decode_frame(wire)
    assert frame.header["payload_size"] == 11
    assert frame.header["payload_type"] == "application/json"
    assert codec.json_payload(frame) == {"a": [1, 2]}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"HELLO",
        b"TWILSOCK V2.0 2\r\n{}\r\n",
        b"TWILSOCK V3.0 x\r\n{}\r\n",
        b"TWILSOCK V3.0 99\r\n{}\r\n",
        b"TWILSOCK V3.0 2\r\n[]\r\n",
        b"TWILSOCK V3.0 4\r\nnope\r\n",
        b'TWILSOCK V3.0 18\r\n{"payload_size":5}\r\nab',
        b'TWILSOCK V3.0 19\r\n{"payload_size":-1}\r\n',
    ],
)
def test_malformed_frames_raise(raw: bytes) -> None:
    with pytest.raises(codec.TwilsockProtocolError):
        codec.decode_frame(raw)


def test_reply_carries_transport_and_http_status() -> None:
    frame = codec.decode_frame(codec.reply("TM4", http_status=412, body={"code": 54103}))
    assert frame.header["status"] == {"code": 200, "status": "OK"}
    assert frame.header["http_status"] == {"code": 412, "status": "Precondition Failed"}
    assert codec.json_payload(frame) == {"code": 54103}


def test_token_refusal_carries_the_twilio_error_code() -> None:
    frame = codec.decode_frame(codec.reply("TM5", 401, description="expired", error_code=20104))
    assert frame.header["status"] == {
        "code": 401,
        # The transport status is spelled as the status's name: the SDK compares "UNAUTHORIZED".
        "status": "UNAUTHORIZED",
        "errorCode": 20104,
        "description": "expired",
    }


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v3/Documents/my%20doc", routes.Route("fetch", "my doc")),
        ("POST", "/v3/Documents", routes.Route("create")),
        ("POST", f"/v3/Services/{SERVICE}/Documents/{SID}", routes.Route("write", SID, SERVICE)),
        ("DELETE", f"/v3/Services/{SERVICE}/Documents/{SID}", routes.Route("remove", SID, SERVICE)),
        ("POST", "/v4/Subscriptions", routes.Route("subscriptions")),
    ],
)
def test_routes(method: str, path: str, expected: routes.Route) -> None:
    assert routes.route(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v3/Lists/x", 404),
        ("POST", "/v3/Maps", 404),
        ("GET", "/v3/Documents/a/b", 404),
        ("GET", "/v3/Documents", 405),
        ("PUT", "/v3/Documents/x", 405),
        ("GET", "/v4/Subscriptions", 405),
    ],
)
def test_unknown_routes_are_errors(method: str, path: str, status: int) -> None:
    with pytest.raises(errors.SyncError) as caught:
        routes.route(method, path)
    assert caught.value.status == status


def test_descriptor_maps_revision_to_last_event_id() -> None:
    doc = Document(SERVICE, SID, "name", 26, b'{"a":1}', 10, 20, None, "alice")
    wire = orjson.loads(orjson.dumps(routes.descriptor(doc, "AC1", "cds.example")))
    assert wire["url"] == f"https://cds.example/v3/Services/{SERVICE}/Documents/{SID}"
    assert wire["revision"] == "1a"
    assert wire["last_event_id"] == 26
    assert wire["data"] == {"a": 1}
    assert wire["date_expires"] is None


def test_event_frames() -> None:
    updated = DocumentEvent("updated", SERVICE, SID, None, 3, b'{"b":2}', date_updated=0)
    frame = codec.decode_frame(TwilsockSession.build_event_frame(updated).payload)
    assert frame.header["message_type"] == "com.twilio.rtd.cds.document"
    assert codec.json_payload(frame) == {
        "event_type": "document_updated",
        "event": {
            "id": 3,
            "document_sid": SID,
            "document_data": {"b": 2},
            "document_revision": "3",
            "date_created": "1970-01-01T00:00:00Z",
        },
    }
    removed = DocumentEvent("removed", SERVICE, SID, None, None, reason="expired")
    body = codec.json_payload(codec.decode_frame(TwilsockSession.build_event_frame(removed).payload))
    assert body == {"event_type": "document_removed", "event": {"document_sid": SID}}
