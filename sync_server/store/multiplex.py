"""One Redis connection shared by every concurrent request, with commands pipelined on it.

Why: the client-side cost of a pooled redis-py call (pool checkout, retry wrapper, a coroutine
chain per read) was a quarter of a REST write's CPU. Here a caller packs its command, queues it and
awaits a future; the commands queued during one event-loop iteration leave in one ``write``, and
``data_received`` feeds hiredis and resolves the futures in order (Redis answers in the order it
received). Concurrent requests share one socket, with no task per command.

Contract: :meth:`MultiplexedRedis.execute` is one round trip; its reply is what hiredis returns
(bytes, ints, lists), an error reply is raised as :class:`redis.exceptions.ResponseError` (or
``NoScriptError``; ``ConnectionError`` while Redis is still loading its data). A lost
connection fails every waiting command with ``ConnectionError``; the next command reconnects. Only
the store uses this (for its scripts); the rare management commands stay on redis-py's client, and
pub/sub has its own connection (hub.py).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

CONNECT_TIMEOUT = 2.0


def pack_command(args: tuple[str | int | bytes, ...]) -> bytes:
    """RESP encoding of one command: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            value = arg
        elif isinstance(arg, str):
            value = arg.encode()
        else:
            value = str(arg).encode()
        parts.append(b"$%d\r\n" % len(value))
        parts.append(value)
        parts.append(b"\r\n")
    return b"".join(parts)


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.pending.popleft()
            if future.done():  # the caller was cancelled; the reply still had to be consumed
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error: Exception = ResponseError(message)
                if message.startswith("NOSCRIPT"):
                    error = NoScriptError(message)
                elif message.startswith("LOADING"):
                    # Redis restarting, still reading its data: "unavailable, try again", not a
                    # failed command (redis-py, too, maps it to a ConnectionError).
                    error = RedisConnectionError(message)
                future.set_exception(error)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError("Connection to Redis lost"))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queues one packed command; the commands queued in one loop iteration leave in one write
        (one syscall for many concurrent requests: automatic pipelining)."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("Connection to Redis lost")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append(future)
        self.outgoing.append(packed)
        if len(self.outgoing) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(outgoing))


class MultiplexedRedis:
    def __init__(self, params: dict[str, Any]) -> None:
        """``params`` are redis-py connection keywords: ``host``/``port`` or ``path``, ``db``,
        ``username``, ``password`` (as ``parse_url`` or a pool's ``connection_kwargs`` give them)."""
        self._params = params
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str) -> MultiplexedRedis:
        return cls(dict(parse_url(url)))

    async def execute(self, *args: str | int | bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send(pack_command(args))

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
                    connecting = loop.create_unix_connection(_RespProtocol, params["path"])
                else:
                    host, port = params.get("host", "localhost"), int(params.get("port", 6379))
                    connecting = loop.create_connection(_RespProtocol, host, port)
                _, protocol = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"Cannot connect to Redis: {exc}") from exc
            if params.get("password"):
                auth = (
                    ("AUTH", params["username"], params["password"])
                    if params.get("username")
                    else (
                        "AUTH",
                        params["password"],
                    )
                )
                await protocol.send(pack_command(auth))
            if params.get("db"):
                await protocol.send(pack_command(("SELECT", int(params["db"]))))
            self._protocol = protocol
            return protocol

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
