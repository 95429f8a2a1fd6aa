"""One Redis connection shared by every concurrent request, with commands pipelined on it.

Why: the client-side cost of a pooled redis-py call (pool checkout, retry wrapper, a coroutine
chain per read) was a quarter of a REST write's CPU. Here a caller packs its command, queues it and
awaits a future; the commands queued during one event-loop iteration leave in one ``write``, and
``data_received`` feeds hiredis and resolves the futures in order (Redis answers in the order it
received). Concurrent requests share one socket, with no task and no timer per command.

Contract: :meth:`MultiplexedRedis.execute` is one round trip; its reply is what hiredis returns
(bytes, ints, lists), an error reply is raised as :class:`redis.exceptions.ResponseError` (or
``NoScriptError``). Failures are of three kinds, so that a caller can tell a command that never left
from one that may have run:

- :class:`CannotConnectError` (a ``ConnectionError``): no connection could be made (refused, connect
  or TLS handshake failed, AUTH/SELECT unanswered); the command was not sent, retrying is safe;
- :class:`ConnectionLostError` (a ``ConnectionError``): the connection broke with the command queued or
  in flight; it may have run, so a write must not be repeated blindly;
- ``redis.exceptions.TimeoutError``: no reply within ``timeout`` seconds of sending; the connection is
  then dropped (a late reply would be taken for the next command's) and every other command waiting on
  it fails with ``ConnectionLostError``. The command may have run, as above.

The next command after a failure reconnects. ``rediss://`` connects with TLS (see :func:`ssl_context`
for the verification options). :meth:`MultiplexedRedis.execute_asking` sends ``ASKING`` and a command
adjacently (for a cluster's ``ASK`` redirection, see cluster_client.py). Only the store uses this (for
its scripts); pub/sub and the rare management commands stay on redis-py's client.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import ConnectionPool, SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server import metrics

CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 5.0
"""Seconds a command may wait for its reply (the caller passes the configured value, see config.py)."""

_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_NEVER = float("inf")


class CannotConnectError(RedisConnectionError):
    """No connection to Redis could be made: the command was never sent (safe to retry)."""


class ConnectionLostError(RedisConnectionError):
    """The connection broke with the command queued or in flight: it may have run (ambiguous)."""


def pack_command(args: tuple[str | int | bytes, ...]) -> bytes:
    """RESP encoding of one command: an array of bulk strings."""
    # One formatting and one append per argument: a document script has twenty of them, and this
    # runs once per store call.
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if type(arg) is not bytes:
            arg = arg.encode() if isinstance(arg, str) else str(arg).encode()
        append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def ssl_context(params: dict[str, Any]) -> ssl.SSLContext | None:
    """The TLS context for ``params`` (None without ``ssl``), from the keys redis-py's ``parse_url``
    gives for a ``rediss://`` URL's query: ``ssl_cert_reqs`` (``required`` by default, ``optional``,
    ``none``), ``ssl_ca_certs`` / ``ssl_ca_path`` / ``ssl_ca_data`` (else the system's CAs),
    ``ssl_certfile`` + ``ssl_keyfile`` (+ ``ssl_password``) for a client certificate, and
    ``ssl_check_hostname`` (true by default, as in redis-py; meaningless without verification)."""
    if not params.get("ssl"):
        return None
    reqs = params.get("ssl_cert_reqs", "required")
    mode = reqs if isinstance(reqs, ssl.VerifyMode) else _CERT_REQS.get(str(reqs).lower())
    if mode is None:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {reqs!r}")
    context = ssl.create_default_context(
        cafile=params.get("ssl_ca_certs"), capath=params.get("ssl_ca_path"), cadata=params.get("ssl_ca_data")
    )
    # check_hostname first: CERT_NONE cannot be set while it is on.
    context.check_hostname = bool(params.get("ssl_check_hostname", True)) and mode != ssl.CERT_NONE
    context.verify_mode = mode
    if params.get("ssl_certfile"):
        context.load_cert_chain(
            params["ssl_certfile"], params.get("ssl_keyfile"), password=params.get("ssl_password")
        )
    return context


def params_from_url(url: str) -> dict[str, Any]:
    """Connection keywords for :class:`MultiplexedRedis` from a ``redis://``, ``rediss://`` or
    ``unix://`` URL (``ssl`` is true for ``rediss://``)."""
    params = dict(parse_url(url))
    connection_class = params.pop("connection_class", None)
    if isinstance(connection_class, type) and issubclass(connection_class, SSLConnection):
        params["ssl"] = True
    return params


def params_from_pool(pool: ConnectionPool) -> dict[str, Any]:
    """The same from a redis-py pool (a client built with ``Redis.from_url``), so that the scripts'
    connection goes where, and how, the rest of the server's does."""
    params = dict(pool.connection_kwargs)
    if issubclass(pool.connection_class, SSLConnection):
        params["ssl"] = True
    return params


class _RespProtocol(asyncio.Protocol):
    def __init__(self, timeout: float | None, counters: metrics.NodeCounters) -> None:
        self.counters = counters
        self.closing = False
        """Set when this side closes the connection on purpose (not counted as lost)."""
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        # The reply deadline of each pending command (loop time), in the same order: replies come
        # in order, so only the oldest can be late, and one timer per connection watches it.
        self.deadlines: collections.deque[float] = collections.deque()
        self.timeout = timeout or None
        self.loop = asyncio.get_running_loop()  # protocols are made by the running loop
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending, deadlines = self.pending, self.deadlines
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = pending.popleft()
            deadlines.popleft()
            if future.done():  # the caller was cancelled (or an ASKING): the reply had to be consumed
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error = NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
                future.set_exception(error)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self.lost or self.closing):
            self.counters.lost.inc()
        self._fail_all(ConnectionLostError("Connection to Redis lost"))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail_all(self, error: Exception) -> None:
        self.lost = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        self.deadlines.clear()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queues one packed command; the commands queued in one loop iteration leave in one write
        (one syscall for many concurrent requests: automatic pipelining)."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise CannotConnectError("Connection to Redis lost before the command was sent")
        loop = self.loop
        future = loop.create_future()
        self.pending.append(future)
        if self.timeout is None:
            self.deadlines.append(_NEVER)
        else:
            deadline = loop.time() + self.timeout
            self.deadlines.append(deadline)
            if self.timer is None:
                self.timer = loop.call_at(deadline, self._check_deadline)
        self.outgoing.append(packed)
        if len(self.outgoing) == 1:
            loop.call_soon(self._flush)
        return future

    def send_asking(self, packed: bytes) -> asyncio.Future[Any]:
        """:meth:`send` with an ``ASKING`` right before, in the same write (its reply is dropped: an
        error would show in the command's own reply)."""
        future = self.send(_ASKING)
        future.cancel()  # done: data_received consumes its reply without delivering it
        return self.send(packed)

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(outgoing))

    def _check_deadline(self) -> None:
        self.timer = None
        if self.lost or not self.deadlines:
            return
        loop = self.loop
        oldest = self.deadlines[0]
        if oldest > loop.time():
            self.timer = loop.call_at(oldest, self._check_deadline)
            return
        # Late: the oldest command gets the timeout, the others lose their connection with it.
        late = self.pending.popleft()
        self.deadlines.popleft()
        if not late.done():
            late.set_exception(RedisTimeoutError(f"Redis did not answer within {self.timeout:g}s"))
        self.counters.timeouts.inc()
        self._fail_all(ConnectionLostError("Connection to Redis dropped after a command timed out"))
        if self.transport is not None:
            self.transport.abort()


class MultiplexedRedis:
    def __init__(
        self,
        params: dict[str, Any],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        preload: tuple[str | bytes, ...] = (),
    ) -> None:
        """``params`` are redis-py connection keywords: ``host``/``port`` or ``path``, ``db``,
        ``username``, ``password`` (as ``parse_url`` or a pool's ``connection_kwargs`` give them; see
        :func:`params_from_url`), plus ``ssl`` and the ``ssl_*`` options of :func:`ssl_context`.
        ``timeout``: seconds each command may wait for its reply (None: no limit). ``preload``: Lua
        scripts loaded (``SCRIPT LOAD``) by every connection before any caller's command goes out,
        so that EVALSHA finds them after a restart too (a NOSCRIPT retry would let the commands
        behind it overtake: see store/scripts.py)."""
        self._params = params
        self._timeout = timeout
        self._preload = preload
        self._ssl = ssl_context(params)
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        address = self.address
        self._counters = metrics.store_node(
            f"unix:{params['path']}" if address is None else f"{address[0]}:{address[1]}"
        )

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)``, or None for a unix socket."""
        if "path" in self._params:
            return None
        return self._params.get("host", "localhost"), int(self._params.get("port", 6379))

    async def execute(self, *args: str | int | bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send(pack_command(args))

    def submit(self, *args: str | int | bytes) -> Awaitable[Any]:
        """:meth:`execute` without a coroutine of its own when connected (the reply's future itself):
        for a router that already is one (cluster_client.py)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return self.execute(*args)
        return protocol.send(pack_command(args))

    async def execute_keyed(self, key: str | bytes, *args: str | int | bytes) -> Any:
        """:meth:`execute`; ``key`` (the first key of the command) only matters on a cluster."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send(pack_command(args))

    async def execute_asking(self, *args: str | int | bytes) -> Any:
        """``ASKING`` then the command, adjacent on this connection (no other caller's command can come
        between them, which would consume the ASKING flag): the answer to a cluster's ``ASK``."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send_asking(pack_command(args))

    async def _connect(self) -> _RespProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            params = self._params
            try:
                if "path" in params:
                    connecting = loop.create_unix_connection(
                        lambda: _RespProtocol(self._timeout, self._counters), params["path"]
                    )
                else:
                    host, port = params.get("host", "localhost"), int(params.get("port", 6379))
                    connecting = loop.create_connection(
                        lambda: _RespProtocol(self._timeout, self._counters),
                        host,
                        port,
                        ssl=self._ssl,
                        server_hostname=host if self._ssl is not None else None,
                    )
                _, protocol = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError (a failed verification) is an OSError
                self._counters.connect_failures.inc()
                raise CannotConnectError(f"Cannot connect to Redis: {exc}") from exc
            try:
                if params.get("password"):
                    if params.get("username"):
                        auth: tuple[str, ...] = ("AUTH", params["username"], params["password"])
                    else:
                        auth = ("AUTH", params["password"])
                    await protocol.send(pack_command(auth))
                if params.get("db"):
                    await protocol.send(pack_command(("SELECT", int(params["db"]))))
                if self._preload:
                    loads = [pack_command(("SCRIPT", "LOAD", source)) for source in self._preload]
                    await asyncio.gather(*map(protocol.send, loads))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                # Nothing of the caller's was sent yet: for the caller, this connection never was.
                self._counters.connect_failures.inc()
                protocol.closing = True
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise CannotConnectError(f"Cannot connect to Redis: {exc}") from exc
            except ResponseError:
                protocol.closing = True
                if protocol.transport is not None:
                    protocol.transport.close()
                raise
            self._counters.connects.inc()
            self._protocol = protocol
            return protocol

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.closing = True
            self._protocol.transport.close()
        self._protocol = None
