"""uvicorn's httptools protocol with a bounded request head and deadlines for requests that never finish.

Size: httptools (llhttp) puts no limit on a request line or on headers, and it joins a header value
chunk by chunk, so one header costs time quadratic in its size: a single 100 MB header stalled the
whole process for seconds. Here the bytes of a request head are counted as they arrive, *before* they
reach the parser; once a head is over ``max_header_bytes`` (or its target over
``max_request_line_bytes``) the request is answered 431 (414) in Twilio's error format and the
connection closes, so an oversized head costs no more than the limit, however much more is sent.

Time (uvicorn itself only closes a connection left idle after a response):

- header timeout: from the connection's start, or a keep-alive request's first byte, to complete
  headers. It closes connections that never send a byte, and slowloris heads;
- body timeout: a request body that goes that long without a byte arriving is abandoned: the
  connection is closed and the app sees a disconnect.

Both are armed only while a head or a body spans several reads, so a request that arrives in one
read (nearly all of them) costs no timer. A websocket handshake is an HTTP request first, so all of
this covers it; once upgraded the connection belongs to the websocket protocol and no timer is left.

Shutdown (SIGTERM): uvicorn closes every connection that has no response in progress, including one
whose request head is half-read, so that request was lost although its client had sent it. Here a
request whose first bytes have arrived is read, answered and then closed (``Connection: close``), and
an idle connection is closed after :data:`IDLE_CLOSE_GRACE`, so a request already in the socket
buffer is answered rather than reset. The drain timeout (``SYNC_DRAIN_TIMEOUT``) bounds it all.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import TimerHandle
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from sync_server import errors
from sync_server.config import Limits

LINGER = 1.0
"""Seconds a refused connection keeps reading (and dropping) what the client still sends, so that
closing it does not reset the connection before the client has read the refusal."""
IDLE_CLOSE_GRACE = 0.05
"""Seconds an idle keep-alive connection stays open once shutdown begins: bytes of a request that
were already in its socket buffer get read (and answered) instead of reset by the close."""


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a refused request."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Pass ``functools.partial(LimitedHttpToolsProtocol, limits=...)`` to uvicorn as ``http``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        # Between requests, and until a request's headers are complete, the connection is "in the
        # head": what arrives is counted. Bytes that follow a complete message in the same read
        # (pipelining) go uncounted, so a head may exceed the limit by at most one read.
        self._in_head = True
        self._head_bytes = 0
        self._in_body = False
        self._last_read = 0.0
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._refused = False
        self._linger_timer: TimerHandle | None = None
        self._draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: the client may still be sending the rest of what was refused
        self._last_read = self.loop.time()
        limit = self.limits.max_header_bytes
        while self._in_head and data:
            budget = limit - self._head_bytes
            if len(data) <= budget:
                self._head_bytes += len(data)
                self._feed(data)
                data = b""
                break
            piece, data = data[:budget], data[budget:]
            self._head_bytes = limit
            self._feed(piece)
            if self._refused or self.transport.is_closing() or self.parser is None:
                return
            if self._in_head and self._head_bytes >= limit:
                self._refuse(errors.RequestHeadTooLarge(f"The request head is over {limit} bytes"))
                return
        if data and not self._refused and not self.transport.is_closing():
            self._feed(data)
        self._arm_timers()

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, which also answers refusals raised by the callbacks."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            self._cancel_timers()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # Parser callbacks

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        limit = self.limits.max_request_line_bytes
        if len(self.url) > limit:
            self._refuse(errors.RequestTargetTooLong(f"The request target is over {limit} bytes"))
            raise _Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = not self.parser.should_upgrade()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # Shutdown

    def shutdown(self) -> None:
        """Called by uvicorn once, when the server begins a graceful shutdown."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not self._head_bytes:  # idle: no response in progress, no request arriving
            self.loop.call_later(IDLE_CLOSE_GRACE, self._close_if_idle)
        # Otherwise a head is arriving: on_headers_complete turns keep-alive off.

    def _close_if_idle(self) -> None:
        if not self._head_bytes and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    # Refusal

    def _refuse(self, error: errors.SyncError) -> None:
        """Answers ``error`` (Twilio's JSON body), then closes once the client stops sending."""
        self._refused = True
        self._cancel_timers()
        self.logger.warning("Refused a request: %s (%d)", error.message, error.status)
        body = orjson.dumps(error.to_dict())
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(
            body
        )
        self.transport.write(STATUS_LINE[error.status] + head + body)
        # Half-close and keep reading for a moment: closing with unread data would make the kernel
        # reset the connection, and a client still sending would then lose the answer.
        with contextlib.suppress(OSError, NotImplementedError, RuntimeError):
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER, self.transport.close)

    # Timers

    def _arm_timers(self) -> None:
        if self._refused or self.transport.is_closing():
            return
        if self._in_head and self._head_bytes and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        elif self._in_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The previous request is still being answered: the next head may wait for it.
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
            return
        self.logger.debug("Closing a connection whose request headers did not arrive in time")
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        idle = self.loop.time() - self._last_read
        if idle < self.limits.body_timeout or self.flow.read_paused:
            # Bytes came meanwhile, or the app is not reading yet (then the client is not to blame).
            delay = self.limits.body_timeout - idle if not self.flow.read_paused else self.limits.body_timeout
            self._body_timer = self.loop.call_later(delay, self._body_timed_out)
            return
        self.logger.debug("Closing a connection whose request body stopped arriving")
        self.transport.close()
