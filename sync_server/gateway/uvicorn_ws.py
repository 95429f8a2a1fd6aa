"""uvicorn's sans-I/O websocket protocol, plus a direct, bounded write path for fan-out.

Pass ``ws="sync_server.gateway.uvicorn_ws:DirectWebSocketProtocol"`` to uvicorn. Each connection's
ASGI scope then carries ``scope["extensions"]["sync.direct"]``: this protocol object, whose
:meth:`write_frame` puts a pre-encoded frame straight into the transport without an ASGI ``send``
coroutine or a task per connection (about a third of the CPU per delivery, see
``shared/reference/fanout-measurements.md``), and whose :meth:`close_now` closes without waiting
for what is queued to drain.

What a slow reader holds is bounded at three levels, so that a close frame sent to it arrives soon:

- the kernel: the socket's send buffer is fixed at :data:`SEND_BUFFER` (Linux doubles it; left to
  autotuning it grows to several MB, all of it ahead of any close frame);
- the transport: frames are written into it only while it is below :data:`TRANSPORT_HIGH_WATER`
  (asyncio's flow control, ``pause_writing``/``resume_writing``);
- past that, whole frames wait in a queue of this protocol, which the outbox bounds. Closing drops
  the queue, so the close frame follows only what the transport and the kernel already hold.

Everything else (handshake, pings and their timeout, size limits) is uvicorn's, unchanged, except the
close code on shutdown (see :meth:`DirectWebSocketProtocol.shutdown`) and the deadline of a closing
handshake the server starts (see :meth:`DirectWebSocketProtocol.close_now`).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import socket
import struct
import termios
from asyncio.transports import BaseTransport
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from protocol import CloseCode

TESTED_UVICORN = ((0, 54), (0, 55))
"""The uvicorn releases (``>=`` first, ``<`` second, as ``major, minor``) whose internals this module
and ``http_protocol.py`` were tested with: both subclass uvicorn's protocols and use their attributes.
pyproject.toml pins the same range; tests/test_uvicorn_pin.py fails on any other release."""
DIRECT_EXTENSION = "sync.direct"
ABORT_AFTER_CLOSE = 2.0
"""Seconds without progress (the client reading what was sent) after which a close is aborted."""
CLOSE_DEADLINE = 10.0
"""Seconds after which a closing handshake the server started is aborted, progress or not."""
SEND_BUFFER = 64 * 1024
TRANSPORT_HIGH_WATER = 64 * 1024


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_paused = False
        self.queued_bytes = 0
        self._frames: collections.deque[bytes] = collections.deque()
        self._fd = -1

    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                self._fd = sock.fileno()

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_queue()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        # Queued frames first (in order), then uvicorn's own sends, which wait on `writable`.
        self.write_paused = False
        frames = self._frames
        while frames and not self.write_paused:
            wire = frames.popleft()
            self.queued_bytes -= len(wire)
            self.transport.write(wire)  # may pause writing again, synchronously
        if not self.write_paused:
            super().resume_writing()

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
        """Writes or queues one complete frame; returns the bytes waiting in the queue and the
        transport (0 while the transport takes writes: it then holds less than its high-water mark),
        or -1 if the connection is closed."""
        if not self.is_open:
            return -1
        if self.write_paused:
            self._frames.append(wire)
            self.queued_bytes += len(wire)
            return self.queued_bytes + int(self.transport.get_write_buffer_size())
        self.transport.write(wire)
        return 0

    def _drop_queue(self) -> None:
        self._frames.clear()
        self.queued_bytes = 0

    def unsent_bytes(self) -> int:
        """What the transport and the kernel still hold for the client (Linux: not yet acknowledged)."""
        unsent = int(self.transport.get_write_buffer_size())
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                unsent += struct.unpack("i", fcntl.ioctl(self._fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return unsent

    def close_now(self, code: int, reason: str = "") -> None:
        """Drops the queued frames, sends a close frame right behind what the transport and the kernel
        hold, and ends the ASGI receive loop.

        The TCP connection is aborted if the peer has not completed the closing handshake once it
        has made no progress reading for :data:`ABORT_AFTER_CLOSE` seconds, or after
        :data:`CLOSE_DEADLINE`: a slow reader still gets to read its close code, a gone one is cut.
        """
        if not self.is_open:
            return
        self._drop_queue()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        deadline = self.loop.time() + CLOSE_DEADLINE
        self.close_timer = self.loop.call_later(
            ABORT_AFTER_CLOSE, self._abort_unless_draining, self.unsent_bytes(), deadline
        )

    def _abort_unless_draining(self, unsent_before: int, deadline: float) -> None:
        unsent = self.unsent_bytes()
        if 0 < unsent < unsent_before and self.loop.time() < deadline:
            self.close_timer = self.loop.call_later(
                ABORT_AFTER_CLOSE, self._abort_unless_draining, unsent, deadline
            )
            return
        self.close_timer = None
        self.transport.abort()

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
        self._drop_queue()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.GOING_AWAY})
        self.conn.send_close(CloseCode.GOING_AWAY)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
