"""Websocket connections served by one protocol object each: no task, no queue per idle connection.

Pass ``ws="sync_server.gateway.uvicorn_ws:WebSocketConnection"`` to uvicorn. uvicorn's HTTP protocol
parses the upgrade request and hands the transport to a :class:`WebSocketConnection`, which runs the
sans-I/O ``websockets`` protocol (handshake, frame parsing, size limit, control frames) and drives its
session (``session.py``) by callbacks: a frame is decoded in ``data_received`` and handed to
:meth:`Session.receive`; work that awaits (a subscribe, a write) runs in a task only while it is in
flight. An idle subscribed connection is this object, its ``websockets`` parser, its session and its
subscriptions; uvicorn's own websocket protocol keeps an ASGI task with its coroutine chain, a
receive queue and events per connection besides (``bench/README.md`` has the breakdown).

The session writes through this object (it is the session's :class:`~sync_server.gateway.outbox.Outbox`):
a pre-encoded frame goes straight into the transport, without a coroutine or a task per connection
(see ``shared/reference/fanout-measurements.md``); the fan-out writes an update into
:attr:`WebSocketConnection.direct` without even a call to ``send`` (``subscriptions.fan_out``).
What a slow reader holds is bounded at three levels, so that a close frame sent to it arrives soon:

- the kernel: the socket's send buffer is fixed at :data:`SEND_BUFFER` (Linux doubles it; left to
  autotuning it grows to several MB, all of it ahead of any close frame);
- the transport: frames are written into it only while it is below :data:`TRANSPORT_HIGH_WATER`
  (asyncio's flow control, ``pause_writing``/``resume_writing``);
- past that, whole frames wait in a queue of this object, bounded by the session's
  ``max_buffered_bytes`` (4508 past it). Closing drops the queue, so the close frame follows only
  what the transport and the kernel already hold.

Pings: one timer per process (``keepalive.py``) pings every connection each ``ws_ping_interval`` and
closes with 1011 one that has not answered within ``ws_ping_timeout``. Shutdown closes with 1001
(:meth:`WebSocketConnection.shutdown`). A closing handshake the server starts is aborted when the
peer stops reading (:meth:`WebSocketConnection.close`).

What is taken from uvicorn (pinned by ``TESTED_UVICORN`` and ``tests/test_uvicorn_pin.py``): the
constructor its HTTP protocols call on an upgrade, then ``connection_made`` and ``data_received``
with the request head; the config's ``ws_*`` settings and ``loaded_app``; the server state's
``connections``, ``tasks`` and ``default_headers``; and ``shutdown()``, which uvicorn calls on every
connection when the server stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import fcntl
import logging
import socket
import struct
import termios
from asyncio.transports import BaseTransport
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import unquote

import orjson
from starlette.types import Scope
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from protocol import CloseCode
from sync_server import errors, metrics
from sync_server.gateway.endpoint import Refused, SocketEndpoint
from sync_server.gateway.frames import OutFrame
from sync_server.gateway.keepalive import Keepalive
from sync_server.gateway.session import Session

TESTED_UVICORN = ((0, 54), (0, 55))
"""The uvicorn releases (``>=`` first, ``<`` second, as ``major, minor``) whose internals this module,
``http_protocol.py`` and ``workers.py`` were tested with. pyproject.toml pins the same range;
tests/test_uvicorn_pin.py fails on any other release."""
ABORT_AFTER_CLOSE = 2.0
"""Seconds without progress (the client reading what was sent) after which a close is aborted."""
CLOSE_DEADLINE = 10.0
"""Seconds after which a closing handshake the server started is aborted, progress or not."""
INVALID_DATA = 1007
SEND_BUFFER = 64 * 1024
TRANSPORT_HIGH_WATER = 64 * 1024

# uvicorn's logger, so that handshake lines look (and are redacted, redaction.py) as before.
log = logging.getLogger("uvicorn.error")


class SocketRouter(Protocol):
    """What the app offers the websocket connections (``app.SyncApp``)."""

    def websocket_endpoint(self, scope: Scope) -> SocketEndpoint:
        """The endpoint of a handshake; raises the ``SyncError`` to answer it with otherwise."""


class _Gateway:
    """What every connection of one server process shares: settings, the router, the keepalive."""

    def __init__(self, config: Config, server_state: ServerState) -> None:
        self.config = config
        self.server_state = server_state
        self.loop = asyncio.get_running_loop()
        self.max_size = config.ws_max_size
        # uvicorn types the set with its own protocols; it only calls shutdown() on each.
        self.connections: set[Any] = cast("set[Any]", server_state.connections)
        self.tasks = server_state.tasks
        self.keepalive = Keepalive(self.loop, config.ws_ping_interval, config.ws_ping_timeout)
        app: Any = config.loaded_app
        # uvicorn may wrap the app (MessageLoggerMiddleware at trace level): look underneath.
        while not hasattr(app, "websocket_endpoint") and hasattr(app, "app"):
            app = app.app
        self.router: SocketRouter | None = app if hasattr(app, "websocket_endpoint") else None

    def route(self, scope: Scope) -> SocketEndpoint:
        if self.router is None:
            raise errors.NotFoundError("This server has no websocket endpoints")
        return self.router.websocket_endpoint(scope)

    def start_task(self, work: Coroutine[Any, Any, None]) -> None:
        # uvicorn's shutdown waits for these tasks (up to its graceful timeout) before the app's
        # lifespan ends, as it waited for the ASGI task of each connection.
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("websocket session task failed", exc_info=task.exception())


_gateway: _Gateway | None = None


def _gateway_for(config: Config, server_state: ServerState) -> _Gateway:
    # One per server process, built at its first connection (tests may run several servers).
    global _gateway
    if _gateway is None or _gateway.config is not config or _gateway.server_state is not server_state:
        _gateway = _Gateway(config, server_state)
    return _gateway


class WebSocketConnection(asyncio.Protocol):
    """One websocket connection, from the upgrade request to the closed transport."""

    __slots__ = (
        "_close_timer",
        "_closed",
        "_fragments",
        "_frames",
        "_gateway",
        "_queued_bytes",
        "_read_paused",
        "_write_paused",
        "conn",
        "direct",
        "keepalive_slot",
        "pong_due",
        "session",
        "transport",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        gateway = _gateway_for(config, server_state)
        self._gateway = gateway
        self.conn = ServerProtocol(max_size=gateway.max_size, logger=log)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.session: Session | None = None
        self.direct: asyncio.Transport | None = None
        """The transport while a frame may go straight into it (the outbox's fast path, outbox.py):
        set once the session starts, cleared while writing is paused and once closing."""
        self._closed = False
        self._read_paused = False
        self._write_paused = False
        # Frames waiting while the transport is over its high-water mark (created when first needed).
        self._frames: collections.deque[bytes] | None = None
        self._queued_bytes = 0
        # The parts of a fragmented message, its text flag first (only while one is arriving).
        self._fragments: list[Any] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.keepalive_slot = -1
        """The keepalive's bucket holding this connection (-1: none); see keepalive.py."""
        self.pong_due = False
        """A ping was sent and its pong has not arrived yet."""

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._gateway.connections.add(self)
        self.transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Frame):
                self._frame_received(event)
            elif isinstance(event, Request):
                self._handshake(event)
        self._flush()
        if self.conn.eof_sent:
            # The closing handshake is complete (whoever began it), the peer broke the protocol, or
            # the handshake was answered with an error: websockets is done with the stream.
            self._finish()

    def eof_received(self) -> None:
        """The transport closes itself (and :meth:`connection_lost` follows)."""

    def connection_lost(self, exc: Exception | None) -> None:
        self._gateway.connections.discard(self)
        self._closing()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if exc is None:
            self.transport.close()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.direct = None

    def resume_writing(self) -> None:
        self._write_paused = False
        frames = self._frames
        while frames and not self._write_paused:
            wire = frames.popleft()
            self._queued_bytes -= len(wire)
            self.transport.write(wire)  # may pause writing again, synchronously
        if not self._write_paused and not self._closed and self.session is not None:
            self.direct = self.transport

    # -- the session's outbox -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def pending_bytes(self) -> int:
        return self._queued_bytes + int(self.transport.get_write_buffer_size())

    def send(self, frame: OutFrame) -> None:
        if self._closed:
            return
        if not self._write_paused:
            self.transport.write(frame.wire)
            return
        if self._frames is None:
            self._frames = collections.deque()
        self._frames.append(frame.wire)
        self._queued_bytes += len(frame.wire)
        session = self.session
        limit = session.limits.max_buffered_bytes if session is not None else 0
        if self.pending_bytes() > limit:
            self.close(CloseCode.TOO_SLOW, "too slow: events were not read fast enough")

    def close(self, code: int, reason: str = "") -> None:
        """Drops the queued frames and sends a close frame right behind what the transport and the
        kernel hold; the session ends at once.

        The TCP connection is aborted if the peer has not completed the closing handshake once it
        has made no progress reading for :data:`ABORT_AFTER_CLOSE` seconds, or after
        :data:`CLOSE_DEADLINE`: a slow reader still gets to read its close code, a gone one is cut.
        """
        if self._closed or self.conn.state is not State.OPEN:
            return
        if code == CloseCode.TOO_SLOW:
            metrics.SLOW_CLOSES.inc()
        self._closing()
        # A close frame's reason holds at most 123 bytes.
        self.conn.send_close(code, reason.encode()[:123].decode(errors="ignore"))
        self._flush()
        # Keep reading: the peer's close frame completes the handshake.
        self.resume_reading()
        deadline = self._gateway.loop.time() + CLOSE_DEADLINE
        self._close_timer = self._gateway.loop.call_later(
            ABORT_AFTER_CLOSE, self._abort_unless_draining, self.unsent_bytes(), deadline
        )

    def pause_reading(self) -> None:
        if not self._read_paused and not self._closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def start_task(self, work: Coroutine[Any, Any, None]) -> None:
        self._gateway.start_task(work)

    # -- called by the keepalive and by uvicorn -----------------------------------------------------

    def ping(self, payload: bytes) -> None:
        self.conn.send_ping(payload)
        self._flush()

    def keepalive_timeout(self) -> None:
        """No pong within the timeout: the peer is gone or hopelessly behind."""
        if self._closed:
            return
        self.conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._flush()
        self._finish()

    def shutdown(self) -> None:
        """Closes an open websocket with 1001 when the server stops.

        uvicorn's own protocol sends 1012 ("service restart"), a code the protocol does not list, so
        clients would wait out the long backoff of unknown codes; 1001 ("going away") is what the
        protocol documents for shutdown and restart, and clients reconnect after it with the usual
        short backoff.
        """
        if not self._closed and self.conn.state is State.OPEN:
            self.conn.send_close(CloseCode.GOING_AWAY)
            self._flush()
        self._finish()

    # -- inside -------------------------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        conn = self.conn
        response = conn.accept(request)
        if response.status_code != 101:
            conn.send_response(response)  # websockets' own refusal of a malformed upgrade
            return
        raw_path, _, query = request.path.partition("?")
        scope: Scope = {
            "type": "websocket",
            "path": unquote(raw_path),
            "query_string": query.encode("latin-1"),
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in request.headers.raw_items()
            ],
        }
        client = self._client()
        refused: Refused | None = None
        try:
            session: Session | None = self._gateway.route(scope).open(scope, self)
        except errors.SyncError as exc:
            log.info('%s - "WebSocket %s" %d', client, request.path, exc.status)
            conn.send_response(_json_response(exc.status, exc.to_dict()))
            return
        except Refused as exc:
            session, refused = None, exc
        except Exception:
            log.exception("websocket handshake failed")
            conn.send_response(conn.reject(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error\n"))
            return
        del response.headers["Date"]
        response.headers.update(
            [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self._gateway.server_state.default_headers
            ]
        )
        conn.send_response(response)
        self._flush()
        # The frames get a protocol of their own, made open: the handshake's would keep the request
        # (a few KiB) alive for the connection's life, in the frame of its parser. uvicorn hands over
        # the request head alone, so no frame bytes are left in the handshake's reader.
        self.conn = ServerProtocol(state=State.OPEN, max_size=self._gateway.max_size, logger=log)
        log.info('%s - "WebSocket %s" [accepted]', client, request.path)
        if session is None:
            assert refused is not None
            self.close(refused.code, refused.reason)
            return
        self.session = session
        if not self._write_paused:
            self.direct = self.transport
        self._gateway.keepalive.add(self)
        session.start()

    def _client(self) -> str:
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return ""

    def _frame_received(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(opcode is Opcode.TEXT, frame.data)
            else:
                self._fragments = [opcode is Opcode.TEXT, bytes(frame.data)]
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:
                return  # websockets refuses a continuation without a start (ProtocolError)
            fragments.append(bytes(frame.data))
            if frame.fin:
                self._fragments = None
                self._message(fragments[0], b"".join(fragments[1:]))
        elif opcode is Opcode.PONG:
            self._gateway.keepalive.answered(self)
        # A ping's pong and a close frame's echo are queued by websockets, written by _flush.

    def _message(self, text: bool, data: bytes | bytearray | memoryview) -> None:
        session = self.session
        if session is None or self._closed:
            return  # past our close frame, or before a session: dropped
        if not text:
            session.receive(bytes(data))
            return
        try:
            decoded = bytes(data).decode()
        except UnicodeDecodeError:
            self.conn.fail(INVALID_DATA, "invalid UTF-8")
            self._flush()
            self._finish()
            return
        session.receive(decoded)

    def _flush(self) -> None:
        writes = self.conn.data_to_send()
        if writes:
            data = b"".join(writes)  # the end-of-stream marker is an empty write
            if data:
                self.transport.write(data)

    def _closing(self) -> None:
        """From now on nothing is sent but control frames; the session ends."""
        self._closed = True
        self.direct = None
        self._frames = None
        self._queued_bytes = 0
        self._gateway.keepalive.remove(self)
        session, self.session = self.session, None
        if session is not None:
            session.end()

    def _finish(self) -> None:
        self._closing()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.transport.close()

    def unsent_bytes(self) -> int:
        """What the transport and the kernel still hold for the client (Linux: not yet acknowledged)."""
        unsent = int(self.transport.get_write_buffer_size())
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return unsent

    def _abort_unless_draining(self, unsent_before: int, deadline: float) -> None:
        unsent = self.unsent_bytes()
        if 0 < unsent < unsent_before and self._gateway.loop.time() < deadline:
            self._close_timer = self._gateway.loop.call_later(
                ABORT_AFTER_CLOSE, self._abort_unless_draining, unsent, deadline
            )
            return
        self._close_timer = None
        self.transport.abort()


def _json_response(status: int, body: dict[str, Any]) -> Response:
    """An HTTP answer to the upgrade request, in Twilio's error format."""
    payload = orjson.dumps(body)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, payload)
