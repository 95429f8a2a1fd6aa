"""One logical connection to the server that outlives its websockets: connect, reconnect, requests.

A supervisor task connects, runs a session (read frames, match replies to requests by ``id``, hand
events to the client) until the websocket closes, then decides from the close code what to do next
(``protocol.reconnect_policy``): reconnect after a jittered backoff, get a new token first (4410), or stop
(4401/4403: *denied*; 1000/1008/1009: *disconnected* for good).

Requests and reconnects: a command whose connection drops before its reply fails with
:class:`~sync_client.errors.ConnectionClosedError`, unless the caller marked it ``retry`` (reads and
subscriptions: sending them again cannot do anything twice), in which case it is sent again on the next
connection. Writes are never resent: the lost one may or may not have been applied. A command issued
while disconnected waits for the next connection; ``request_timeout`` bounds the whole wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from protocol import (
    CloseCode,
    Command,
    Connected,
    ErrorReply,
    ProtocolError,
    Reconnect,
    Removed,
    Reply,
    SubscriptionEnded,
    TokenExpiring,
    Updated,
    UpdateToken,
    decode_server_message,
    encode_command,
    reconnect_policy,
)
from sync_client.backoff import Backoff
from sync_client.errors import (
    ConnectionClosedError,
    ConnectionDeniedError,
    InvalidRequestError,
    RequestTimeoutError,
    SyncClientError,
    error_from_reply,
)
from sync_client.events import ConnectionState, Emitter

log = logging.getLogger("sync_client")

TokenProvider = Callable[[], Awaitable[str]]
ReplyHook = Callable[[Mapping[str, Any]], None]
# Events the server pushes for documents; the client routes them by SID.
DocumentPush = Updated | Removed | SubscriptionEnded

# Replies carry documents of at most 16 KiB of data; this leaves room for anything a newer server adds.
MAX_SERVER_FRAME = 4 * 1024 * 1024
DEFAULT_MAX_FRAME = 64 * 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str | None = None
    token_provider: TokenProvider | None = None
    basic: tuple[str, str] | None = None
    service: str | None = None
    identity: str | None = None


@dataclass(slots=True)
class _InFlight:
    future: asyncio.Future[Reply | ErrorReply]
    on_reply: ReplyHook | None


def websocket_url(url: str) -> str:
    """``http(s)://host[:port]`` or ``ws(s)://…``; an empty path means the server's ``/ws``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Connection:
    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        on_push: Callable[[DocumentPush], None],
        on_connected: Callable[[], Coroutine[Any, Any, None]],
        backoff: Backoff,
        request_timeout: float,
        open_timeout: float,
        max_frame_bytes: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._url = websocket_url(url)
        self._credentials = credentials
        self._token = credentials.token
        self._on_push = on_push
        self._on_connected = on_connected
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._open_timeout = open_timeout
        self._max_frame = max_frame_bytes
        self.state = ConnectionState.DISCONNECTED
        self.state_changed: Emitter[ConnectionState] = Emitter()
        self.info: Connected | None = None
        """The ``connected`` event of the current (or last) websocket."""
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._in_flight: dict[int | str, _InFlight] = {}
        self._ready = asyncio.Event()
        self._final: ConnectionClosedError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._refreshing = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, connect_timeout: float) -> None:
        """Connects; raises if the first connection is denied or not up within ``connect_timeout`` s."""
        if self._supervisor is not None:
            raise RuntimeError("the client is already started")
        self._supervisor = asyncio.create_task(self._run(), name="sync-client")
        try:
            async with asyncio.timeout(connect_timeout):
                await self._wait_connected()
        except TimeoutError:
            await self.close()
            message = f"could not connect to {self._url} within {connect_timeout:g} s"
            raise ConnectionClosedError(message) from None
        except ConnectionClosedError:
            await self.close()
            raise

    async def close(self) -> None:
        if self._final is None:
            self._final = ConnectionClosedError("the client is closed")
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.NORMAL)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        for task in tuple(self._background):
            task.cancel()
        self._fail_in_flight()
        if self.state is not ConnectionState.DENIED:
            self._set_state(ConnectionState.DISCONNECTED)
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._final is not None

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            self.state_changed.emit(state)

    # -- the supervisor ---------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        need_token = self._token is None and self._credentials.basic is None
        while self._final is None:
            self._set_state(ConnectionState.CONNECTING)
            slow = False
            if need_token:
                need_token = not await self._fetch_token()
            ws = None if need_token else await self._open()
            if ws is not None:
                code, reason, connected = await self._session(ws)
                if connected:
                    failures = 0
                if self._final is not None:
                    return
                policy = reconnect_policy(code)
                if code in (CloseCode.INVALID_TOKEN, CloseCode.FORBIDDEN) or (
                    policy is Reconnect.NEW_TOKEN and self._credentials.token_provider is None
                ):
                    denied = ConnectionDeniedError(f"access denied: {reason}", code)
                    self._stop(denied, ConnectionState.DENIED)
                    return
                if policy is Reconnect.NO:
                    message = f"the server closed the connection ({code} {reason})"
                    self._stop(ConnectionClosedError(message, code), ConnectionState.DISCONNECTED)
                    return
                need_token = policy is Reconnect.NEW_TOKEN
                slow = policy is Reconnect.BACKOFF
            if self._final is not None:
                return
            self._set_state(ConnectionState.DISCONNECTED)
            await asyncio.sleep(self._backoff.delay(failures, slow=slow))
            failures += 1

    async def _open(self) -> ClientConnection | None:
        try:
            return await connect(
                self._handshake_url(),
                additional_headers=self._headers(),
                open_timeout=self._open_timeout,
                max_size=MAX_SERVER_FRAME,
                proxy=None,
                compression=None,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.info("connecting to %s failed: %r", self._url, exc)
        except InvalidURI as exc:
            self._stop(ConnectionClosedError(f"invalid server URL: {exc}"), ConnectionState.DISCONNECTED)
        return None

    def _stop(self, error: ConnectionClosedError, state: ConnectionState) -> None:
        self._final = error
        self._set_state(state)
        self._fail_in_flight()
        self._ready.set()

    async def _session(self, ws: ClientConnection) -> tuple[int, str, bool]:
        """Runs one websocket until it closes; returns its close code and reason, and whether the
        server accepted it (sent ``connected``)."""
        connected = False
        resync: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self._open_timeout):
                first = decode_server_message(await ws.recv())
            if not isinstance(first, Connected):
                raise ProtocolError(0, "the first frame was not 'connected'")
            connected = True
            self.info = first
            self._ws = ws
            self._set_state(ConnectionState.CONNECTED)
            self._ready.set()
            resync = asyncio.create_task(self._on_connected())
            async for frame in ws:
                self._dispatch(frame)
        except ConnectionClosed:
            pass
        except (TimeoutError, ProtocolError, OSError) as exc:
            log.warning("dropping the connection: %r", exc)
        finally:
            self._ws = None
            self._ready.clear()
            if resync is not None:
                resync.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
        code = ws.close_code if ws.close_code is not None else CloseCode.ABNORMAL
        reason = ws.close_reason or ""
        self._fail_in_flight(ConnectionClosedError(f"connection lost ({code} {reason})".strip(), code))
        return code, reason, connected

    def _handshake_url(self) -> str:
        creds = self._credentials
        if creds.basic is None:
            return self._url
        query = {k: v for k, v in (("service", creds.service), ("identity", creds.identity)) if v}
        if not query:
            return self._url
        parts = urlsplit(self._url)
        joined = "&".join(filter(None, [parts.query, urlencode(query)]))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))

    def _headers(self) -> dict[str, str]:
        if self._credentials.basic is not None:
            user, secret = self._credentials.basic
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}
        # A header rather than ?token=: URLs end up in logs, headers less often.
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch_token(self) -> bool:
        provider = self._credentials.token_provider
        if provider is None:
            return False
        try:
            self._token = await provider()
        except Exception:
            # Retried after the usual backoff, like a failed connection.
            log.exception("the token provider failed")
            return False
        return True

    # -- frames in --------------------------------------------------------------------------------

    def _dispatch(self, frame: str | bytes) -> None:
        try:
            message = decode_server_message(frame)
        except ProtocolError as exc:
            # Unknown events are how newer servers add features: ignore, as the protocol asks.
            log.debug("ignored a server frame: %s", exc.message)
            return
        if isinstance(message, Reply | ErrorReply):
            in_flight = None if message.id is None else self._in_flight.pop(message.id, None)
            if in_flight is None:
                if isinstance(message, ErrorReply):
                    log.warning("error reply to no command: %s %s", message.code, message.message)
                return
            # The hook runs here, before any later frame, so that the caller's state (a newly opened
            # document, say) is in place before the events that follow the reply are dispatched.
            if isinstance(message, Reply) and in_flight.on_reply is not None:
                try:
                    in_flight.on_reply(message.result)
                except Exception:
                    log.exception("handling a reply failed")
            if not in_flight.future.done():
                in_flight.future.set_result(message)
        elif isinstance(message, TokenExpiring):
            self._refresh_token_soon()
        elif isinstance(message, Updated | Removed | SubscriptionEnded):
            self._on_push(message)

    def _fail_in_flight(self, error: ConnectionClosedError | None = None) -> None:
        pending, self._in_flight = self._in_flight, {}
        for in_flight in pending.values():
            if not in_flight.future.done():
                reason = error or self._final or ConnectionClosedError("connection lost")
                # One exception object per future: a shared one would collect every caller's traceback.
                in_flight.future.set_exception(ConnectionClosedError(reason.message, reason.close_code))

    # -- requests ---------------------------------------------------------------------------------

    async def _wait_connected(self) -> ClientConnection:
        while True:
            if self._final is not None:
                raise type(self._final)(self._final.message, self._final.close_code)
            if self._ws is not None and self.state is ConnectionState.CONNECTED:
                return self._ws
            await self._ready.wait()
            # ``_ready`` may still be set from a session that just ended; yield so it can be cleared.
            if self._ws is None and self._final is None:
                self._ready.clear()

    async def request(
        self, make: Callable[[int], Command], *, retry: bool = False, on_reply: ReplyHook | None = None
    ) -> Mapping[str, Any]:
        """Sends the command ``make(id)`` and returns its reply's result, or raises its error.

        ``retry``: send it again on the next connection if this one drops before the reply (only for
        commands that cannot take effect twice). ``on_reply`` runs on success as soon as the reply is
        read, before any later frame is dispatched.
        """
        try:
            async with asyncio.timeout(self._request_timeout):
                reply = await self._send_until_answered(make, retry, on_reply)
        except TimeoutError:
            raise RequestTimeoutError(f"no reply within {self._request_timeout:g} s") from None
        if isinstance(reply, ErrorReply):
            raise error_from_reply(reply.code, reply.status, reply.message)
        return reply.result

    async def _send_until_answered(
        self, make: Callable[[int], Command], retry: bool, on_reply: ReplyHook | None
    ) -> Reply | ErrorReply:
        while True:
            ws = await self._wait_connected()
            command_id = next(self._ids)
            frame = encode_command(make(command_id))
            if len(frame) > self._max_frame:
                # The server would close the connection (1009) and the client could not reconnect.
                message = f"command of {len(frame)} bytes is over the frame limit"
                raise InvalidRequestError(54006, 413, message)
            future: asyncio.Future[Reply | ErrorReply] = asyncio.get_running_loop().create_future()
            self._in_flight[command_id] = _InFlight(future, on_reply)
            try:
                await ws.send(frame, text=True)
                return await future
            except (ConnectionClosed, ConnectionClosedError) as exc:
                if not retry or self._final is not None:
                    if isinstance(exc, ConnectionClosedError):
                        raise
                    raise ConnectionClosedError("connection lost", ws.close_code) from None
            finally:
                self._in_flight.pop(command_id, None)

    # -- tokens -----------------------------------------------------------------------------------

    def _refresh_token_soon(self) -> None:
        if self._credentials.token_provider is None or self._refreshing:
            return
        self._refreshing = True
        task = asyncio.create_task(self._refresh_token())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_token(self) -> None:
        try:
            if not await self._fetch_token():
                return
            token = self._token
            assert token is not None
            await self.request(lambda command_id: UpdateToken(command_id, token))
        except SyncClientError as exc:
            # The next connection uses the new token anyway; if the server closes this one with 4410
            # first, the supervisor asks the provider again.
            log.warning("refreshing the access token failed: %r", exc)
        finally:
            self._refreshing = False
