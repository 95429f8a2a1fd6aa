"""What documents and the connection report: event values, callbacks and bounded event streams."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeAlias, TypeVar

from protocol import RemovalReason
from sync_client.errors import EventsOverflowError

__all__ = [
    "ConnectionState",
    "DocumentAccessRevoked",
    "DocumentEvent",
    "DocumentRemoved",
    "DocumentUpdated",
    "EventStream",
]

log = logging.getLogger("sync_client")

T = TypeVar("T")


class ConnectionState(StrEnum):
    """The client's connection, as ``client.on("connection_state", …)`` reports it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    """Not connected: waiting to reconnect, or for good after :meth:`SyncClient.close`."""
    DENIED = "denied"
    """The server refused the credentials; the client does not reconnect."""


@dataclass(frozen=True, slots=True)
class DocumentUpdated:
    """A document changed (a push, the reply to this client's own write, or a resubscribe after a
    reconnect that found a newer revision). Fired once per revision, in increasing revision order."""

    sid: str
    unique_name: str | None
    revision: str
    previous_revision: str | None
    """The revision this write replaced, as the server reports it for pushed events; for changes learned
    from a reply or a resubscribe, the revision this client held before (intermediate ones were skipped)."""
    data: dict[str, Any]
    date_updated: datetime


@dataclass(frozen=True, slots=True)
class DocumentRemoved:
    """A document is gone (its subscription ended with it); ``revision`` is None after an expiry."""

    sid: str
    unique_name: str | None
    revision: str | None
    reason: RemovalReason


@dataclass(frozen=True, slots=True)
class DocumentAccessRevoked:
    """The server ended the subscription: this identity may no longer read the document (access
    control, ``code`` 54007). The document lives on but this copy is closed; open it again once
    read is granted."""

    sid: str
    unique_name: str | None
    code: int
    message: str


DocumentEvent: TypeAlias = DocumentUpdated | DocumentRemoved | DocumentAccessRevoked
Callback: TypeAlias = Callable[[T], "Awaitable[None] | None"]


class Emitter(Generic[T]):
    """Callbacks of one event name. A callback may be a coroutine function: it then runs as a task.

    A failing callback is logged and does not stop the others, nor the client.
    """

    __slots__ = ("_callbacks", "_tasks")

    def __init__(self) -> None:
        self._callbacks: list[Callback[T]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, callback: Callback[T]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def emit(self, value: T) -> None:
        for callback in tuple(self._callbacks):
            try:
                result = callback(value)
            except Exception:
                log.exception("a %s callback failed", type(value).__name__)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(_logged(result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)


async def _logged(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("an event callback failed")


_END = object()


class EventStream:
    """``async for event in doc.events()``: the document's events from the moment of the call.

    Bounded: a consumer that falls more than ``max_queued`` events behind gets the queued events, then
    :class:`EventsOverflowError` (the document's own state stays current). The stream ends after a
    ``removed`` event, when the document is closed, or when the client closes; :meth:`close` ends it early.
    """

    def __init__(self, max_queued: int, on_close: Callable[[EventStream], None]) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self._max = max_queued
        self._queue: collections.deque[object] = collections.deque()
        self._wake = asyncio.Event()
        self._overflowed = False
        self._ended = False
        self._on_close = on_close

    def put(self, event: DocumentEvent) -> None:
        if self._ended or self._overflowed:
            return
        if len(self._queue) >= self._max:
            self._overflowed = True
            self._finish()
            return
        self._queue.append(event)
        self._wake.set()

    def end(self) -> None:
        """No more events (the queued ones are still delivered)."""
        if not self._ended:
            self._queue.append(_END)
            self._finish()

    def close(self) -> None:
        """Stops the stream now, dropping what is queued."""
        self._overflowed = False
        self._queue.clear()
        self._queue.append(_END)
        if not self._ended:
            self._finish()

    def _finish(self) -> None:
        self._ended = True
        self._wake.set()
        self._on_close(self)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> DocumentEvent:
        while not self._queue:
            if self._overflowed:
                self._overflowed = False
                self._queue.append(_END)
                raise EventsOverflowError(f"the consumer fell more than {self._max} events behind")
            if self._ended:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        item = self._queue.popleft()
        if item is _END:
            self._queue.appendleft(_END)
            raise StopAsyncIteration
        assert isinstance(item, DocumentUpdated | DocumentRemoved)
        return item
