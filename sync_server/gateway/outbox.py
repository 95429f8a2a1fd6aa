"""What a connection may have waiting to be sent, bounded, and what happens past the bound.

:meth:`Outbox.send` never blocks and never raises: the hub calls it for every subscriber in turn,
so one slow client must not delay the others. Past ``max_buffered`` bytes waiting, the connection is
closed with 4508 (too slow; the client reconnects and resubscribes with its last revisions).

Under uvicorn the waiting bytes are those of the protocol's queue plus its transport; the kernel's
socket buffer adds a small fixed amount (see ``uvicorn_ws.py``). The close drops the queue, so the
4508 frame reaches the client right after what the transport and the kernel already hold.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Protocol

from starlette.websockets import WebSocket

from protocol import CloseCode
from sync_server import metrics
from sync_server.gateway.frames import OutFrame
from sync_server.gateway.uvicorn_ws import DIRECT_EXTENSION, DirectWebSocketProtocol

log = logging.getLogger(__name__)


class Outbox(Protocol):
    @property
    def closed(self) -> bool: ...

    def send(self, frame: OutFrame) -> None:
        """Queues ``frame`` for the client; closes the connection (4508) if too much is waiting."""

    def close(self, code: int, reason: str = "") -> None:
        """Closes the connection with ``code``, without waiting for what is queued to drain."""

    async def aclose(self) -> None:
        """Releases what the outbox holds (its writer task, if any)."""


def outbox_for(websocket: WebSocket, max_buffered: int) -> Outbox:
    """The direct outbox under uvicorn with :class:`DirectWebSocketProtocol`, else a queued one."""
    direct = websocket.scope.get("extensions", {}).get(DIRECT_EXTENSION)
    if isinstance(direct, DirectWebSocketProtocol):
        return DirectOutbox(direct, max_buffered)
    return QueuedOutbox(websocket, max_buffered)


class DirectOutbox:
    """Writes each frame straight into the connection's transport, or its protocol's queue while the
    transport is full (no task per connection)."""

    __slots__ = ("_closed", "_max", "_proto")

    def __init__(self, proto: DirectWebSocketProtocol, max_buffered: int) -> None:
        self._proto = proto
        self._max = max_buffered
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed or not self._proto.is_open

    def send(self, frame: OutFrame) -> None:
        if self._closed:
            return
        waiting = self._proto.write_frame(frame.wire)
        if waiting > self._max:
            self.close(CloseCode.TOO_SLOW, "too slow: events were not read fast enough")

    def close(self, code: int, reason: str = "") -> None:
        if not self._closed:
            self._closed = True
            if code == CloseCode.TOO_SLOW:
                metrics.SLOW_CLOSES.inc()
            self._proto.close_now(code, reason)

    async def aclose(self) -> None:
        self._closed = True


class QueuedOutbox:
    """For ASGI servers without the direct path: a bounded queue drained by one writer task."""

    def __init__(self, websocket: WebSocket, max_buffered: int) -> None:
        self._websocket = websocket
        self._max = max_buffered
        self._queue: collections.deque[OutFrame] = collections.deque()
        self._size = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._close_code: int | None = None
        self._writer = asyncio.create_task(self._write_forever())

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, frame: OutFrame) -> None:
        if self._closed:
            return
        self._queue.append(frame)
        self._size += len(frame.payload)
        if self._size > self._max:
            self.close(CloseCode.TOO_SLOW, "too slow: events were not read fast enough")
            return
        self._wake.set()

    def close(self, code: int, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if code == CloseCode.TOO_SLOW:
            metrics.SLOW_CLOSES.inc()
        self._queue.clear()
        self._close_code = code
        self._wake.set()

    async def _write_forever(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and not self._closed:
                    frame = self._queue.popleft()
                    self._size -= len(frame.payload)
                    if frame.binary:
                        await self._websocket.send_bytes(frame.payload)
                    else:
                        await self._websocket.send_text(frame.payload.decode())
                if self._closed:
                    if self._close_code is not None:
                        await self._websocket.close(self._close_code)
                    return
        except Exception:  # the peer went away mid-send: nothing left to deliver to
            self._closed = True

    async def aclose(self) -> None:
        self._closed = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
