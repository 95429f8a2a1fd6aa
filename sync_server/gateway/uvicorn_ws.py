"""uvicorn's sans-I/O websocket protocol, plus a direct write path for fan-out.

Pass ``ws="sync_server.gateway.uvicorn_ws:DirectWebSocketProtocol"`` to uvicorn. Each connection's
ASGI scope then carries ``scope["extensions"]["sync.direct"]``: this protocol object, whose
:meth:`write_frame` puts a pre-encoded frame straight into the transport without an ASGI ``send``
coroutine or a task per connection (about a third of the CPU per delivery, see
``shared/reference/fanout-measurements.md``), and whose :meth:`close_now` closes without waiting
for a full write buffer to drain.

Everything else (handshake, pings and their timeout, the closing handshake, size limits) is
uvicorn's, unchanged, except the close code on shutdown (see :meth:`DirectWebSocketProtocol.shutdown`).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from protocol import CloseCode

DIRECT_EXTENSION = "sync.direct"
ABORT_AFTER_CLOSE = 2.0


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            # The ASGI task is scheduled but has not run yet: it will see the extension.
            scope["extensions"][DIRECT_EXTENSION] = self

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response are only needed until the accept is written;
            # kept, they are a few KiB per idle connection.
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]

    @property
    def is_open(self) -> bool:
        return self.handshake_complete and not (
            self.close_sent or self.disconnected or self.transport.is_closing()
        )

    def write_frame(self, wire: bytes) -> int:
        """Writes one complete frame; returns the bytes now waiting in the transport (-1 if closed)."""
        if not self.is_open:
            return -1
        self.transport.write(wire)
        return int(self.transport.get_write_buffer_size())

    def close_now(self, code: int, reason: str = "") -> None:
        """Sends a close frame at once and ends the ASGI receive loop; aborts the TCP connection if
        the peer has not completed the closing handshake within a short time."""
        if not self.is_open:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(ABORT_AFTER_CLOSE, self.transport.abort)

    def shutdown(self) -> None:
        """Closes an open websocket with 1001 when the server stops.

        uvicorn sends 1012 ("service restart"), a code the protocol does not list, so clients would
        wait out the long backoff of unknown codes; 1001 ("going away") is what the protocol documents
        for shutdown and restart, and clients reconnect after it with the usual short backoff.
        """
        if self.close_sent or not self.handshake_complete:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.GOING_AWAY})
        self.conn.send_close(CloseCode.GOING_AWAY)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
