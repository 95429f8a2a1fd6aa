"""What a session sees of its connection: a bounded outbox, reading control, and tasks.

:meth:`Outbox.send` never blocks and never raises: the hub calls it for every subscriber in turn,
so one slow client must not delay the others. Past ``max_buffered_bytes`` waiting, the connection is
closed with 4508 (too slow; the client reconnects and resubscribes with its last revisions).

The one implementation is the websocket connection of ``uvicorn_ws.py``: it writes each frame
straight into its transport, and queues whole frames only while the transport is over its
high-water mark; the kernel's socket buffer adds a small fixed amount. Closing drops the queue, so
the 4508 frame reaches the client right after what the transport and the kernel already hold.

The fan-out (``subscriptions.fan_out``) skips even the call to :meth:`Outbox.send` while it can:
:attr:`Outbox.direct` is the transport itself exactly while ``send`` would write into it at once,
and None whenever the frame must be queued or dropped, so the bound holds either way.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from sync_server.gateway.frames import OutFrame


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...


class Outbox(Protocol):
    @property
    def direct(self) -> Writer | None:
        """Where a frame's bytes may be written straight away, bypassing :meth:`send`: set only while
        that is exactly what :meth:`send` would do (the connection open, nothing queued, the transport
        under its high-water mark); None otherwise. Writing there may make it None (synchronously)."""

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed: nothing sent is delivered any more."""

    def pending_bytes(self) -> int:
        """What was written and is not yet handed to the kernel: the bytes that count against the
        connection's bound (``max_buffered_bytes``)."""

    def send(self, frame: OutFrame) -> None:
        """Writes ``frame`` for the client; closes the connection (4508) if too much is waiting."""

    def close(self, code: int, reason: str = "") -> None:
        """Closes the connection with ``code``, without waiting for what is queued to drain."""

    def pause_reading(self) -> None:
        """Stops reading frames from the client until :meth:`resume_reading`."""

    def resume_reading(self) -> None: ...

    def start_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs ``work`` in a task that the server waits for (up to its drain timeout) when it stops."""
