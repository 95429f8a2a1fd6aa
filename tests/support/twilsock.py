"""A minimal Twilsock client for tests that speak the SDK's protocol frame by frame."""

from __future__ import annotations

from typing import Any

import orjson
from websockets.sync.client import ClientConnection

from sync_server.gateway import twilsock_codec as codec

__all__ = ["TwilsockPeer"]


class TwilsockPeer:
    """A minimal Twilsock client: sends requests, collects replies and notifications."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.notifications: list[dict[str, Any]] = []

    def send(self, header: dict[str, Any], payload: bytes = b"") -> str:
        message_id = codec.new_message_id()
        self.ws.send(codec.encode_frame({"id": message_id, **header}, payload))
        return message_id

    def receive(self) -> codec.TwilsockFrame:
        data = self.ws.recv(timeout=5)
        assert isinstance(data, bytes), "server frames must be binary"
        return codec.decode_frame(data)

    def reply_to(self, message_id: str) -> codec.TwilsockFrame:
        while True:
            frame = self.receive()
            if frame.method == "reply" and frame.id == message_id:
                return frame
            if frame.method == "notification":
                self.notifications.append(codec.json_payload(frame))

    def notification(self) -> dict[str, Any]:
        if self.notifications:
            return self.notifications.pop(0)
        frame = self.receive()
        assert frame.method == "notification", frame.header
        body: dict[str, Any] = codec.json_payload(frame)
        return body

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> codec.TwilsockFrame:
        # The SDK sends every DELETE with this raw body, labelled JSON.
        payload = b"data_sync" if method == "DELETE" else b"" if body is None else orjson.dumps(body)
        request = {"host": "cds.example", "path": path, "method": method, "params": {}, "headers": headers}
        message = {"method": "message", "active_grant": "data_sync", "http_request": request}
        return self.reply_to(self.send(message, payload))
