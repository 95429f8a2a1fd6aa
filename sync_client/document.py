"""A subscribed document: its latest known state, writes, and the events that change it.

The state only moves forward: every document the client learns about (a pushed event, the reply to
its own write, a fetch, a resubscribe after a reconnect) is applied only if its revision is newer than
the one held, and each applied revision fires ``updated`` exactly once. Replies and events for the same
write may arrive in either order; whichever comes first fires the event, the other is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, overload

from protocol import Fetch, Remove, Set, SetTtl, Subscribe, Unsubscribe, Update
from sync_client.backoff import Backoff
from sync_client.connection import Connection, ReplyHook
from sync_client.errors import ConnectionClosedError, NotFoundError, RateLimitedError, RevisionMismatchError
from sync_client.events import (
    Callback,
    DocumentAccessRevoked,
    DocumentEvent,
    DocumentRemoved,
    DocumentUpdated,
    Emitter,
    EventStream,
)

__all__ = ["SyncDocument"]

MUTATE_MAX_ATTEMPTS = 64
# Between mutate attempts: about 2 ms, doubling per conflict, capped at 100 ms, jittered, so that
# contending writers spread out instead of colliding again in lockstep.
_MUTATE_BACKOFF = Backoff(initial=0.002, maximum=0.1)

Mutator = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def parse_date(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class SyncDocument:
    """Obtained from :meth:`SyncClient.document`; subscribed until :meth:`close` or its removal.

    ``data`` is a copy of the latest known data (change it with :meth:`set`, :meth:`update` or
    :meth:`mutate`); ``revision`` is the server's lowercase hex revision of that data.
    """

    def __init__(
        self, connection: Connection, wire: Mapping[str, Any], forget: Callable[[SyncDocument], None]
    ) -> None:
        self._connection = connection
        self._forget = forget
        self.sid: str = wire["sid"]
        self._load(wire)
        self._updated: Emitter[DocumentUpdated] = Emitter()
        self._removed: Emitter[DocumentRemoved] = Emitter()
        self._revoked: Emitter[DocumentAccessRevoked] = Emitter()
        self._streams: set[EventStream] = set()
        self._ended = False

    def _load(self, wire: Mapping[str, Any]) -> None:
        self.unique_name: str | None = wire["unique_name"]
        self.revision: str = wire["revision"]
        self._data: dict[str, Any] = wire["data"]
        self.date_created = parse_date(wire["date_created"])
        self.date_updated = parse_date(wire["date_updated"])
        expires = wire.get("date_expires")
        self.date_expires: datetime | None = None if expires is None else parse_date(expires)
        self.created_by: str = wire["created_by"]

    @property
    def data(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    @property
    def closed(self) -> bool:
        """True once the document was closed or removed: it receives no more events."""
        return self._ended

    def __repr__(self) -> str:
        return f"<SyncDocument {self.sid} {self.unique_name!r} revision {self.revision}>"

    # -- events -----------------------------------------------------------------------------------

    @overload
    def on(self, event: Literal["updated"], callback: Callback[DocumentUpdated]) -> Callable[[], None]: ...
    @overload
    def on(self, event: Literal["removed"], callback: Callback[DocumentRemoved]) -> Callable[[], None]: ...
    @overload
    def on(
        self, event: Literal["revoked"], callback: Callback[DocumentAccessRevoked]
    ) -> Callable[[], None]: ...
    def on(self, event: str, callback: Any) -> Callable[[], None]:
        """Calls ``callback(event)`` for each ``updated``, ``removed`` or ``revoked`` (the read permission
        was taken away); returns a function that stops it."""
        if event == "updated":
            return self._updated.add(callback)
        if event == "removed":
            return self._removed.add(callback)
        if event == "revoked":
            return self._revoked.add(callback)
        raise ValueError(f"unknown document event {event!r}: use 'updated', 'removed' or 'revoked'")

    def events(self, *, max_queued: int = 1000) -> EventStream:
        """``async for event in doc.events()``: every event from now on (see :class:`EventStream`)."""
        stream = EventStream(max_queued, self._streams.discard)
        if self._ended:
            stream.end()
        else:
            self._streams.add(stream)
        return stream

    def _emit(self, event: DocumentEvent) -> None:
        for stream in tuple(self._streams):
            stream.put(event)
        if isinstance(event, DocumentUpdated):
            self._updated.emit(event)
        elif isinstance(event, DocumentRemoved):
            self._removed.emit(event)
        else:
            self._revoked.emit(event)

    # -- state from the server --------------------------------------------------------------------

    def _apply(self, wire: Mapping[str, Any], previous_revision: str | None = None) -> None:
        """Takes ``wire`` if it is newer than what is held, and fires ``updated``."""
        if self._ended:
            return
        revision, held_revision = int(wire["revision"], 16), int(self.revision, 16)
        if revision == held_revision:
            # A TTL-only write keeps the revision: only the expiry moved, and no event is due.
            expires = wire.get("date_expires")
            self.date_expires = None if expires is None else parse_date(expires)
            return
        if revision < held_revision:
            return
        held = self.revision
        self._load(wire)
        event = DocumentUpdated(
            sid=self.sid,
            unique_name=self.unique_name,
            revision=self.revision,
            previous_revision=previous_revision if previous_revision is not None else held,
            data=copy.deepcopy(self._data),
            date_updated=self.date_updated,
        )
        self._emit(event)

    def _on_pushed_update(self, wire: Mapping[str, Any]) -> None:
        self._apply(wire, wire.get("previous_revision"))

    def _on_document_reply(self, result: Mapping[str, Any]) -> None:
        document = result.get("document")
        if document is not None:
            self._apply(document)

    def _on_ended(self, event: DocumentAccessRevoked) -> None:
        """The subscription ended on the server: the document is closed here (not resubscribed)."""
        self._on_removed(event)

    def _on_removed(self, event: DocumentRemoved | DocumentAccessRevoked) -> None:
        if self._ended:
            return
        self._ended = True
        self._emit(event)
        self._detach()

    def _close_locally(self) -> None:
        if not self._ended:
            self._ended = True
            self._detach()

    def _detach(self) -> None:
        """Forgotten by the client (no more events are routed here); streams end once drained."""
        self._forget(self)
        for stream in tuple(self._streams):
            stream.end()

    # -- commands ---------------------------------------------------------------------------------

    async def _write(self, command: Callable[[int], Set | Update | SetTtl]) -> dict[str, Any]:
        result = await self._connection.request(command, on_reply=self._on_document_reply)
        data: dict[str, Any] = result["document"]["data"]
        # A copy: the reply's dict may now be the document's own state.
        return copy.deepcopy(data)

    async def set(
        self, data: dict[str, Any], *, if_match: str | None = None, ttl: int | None = None
    ) -> dict[str, Any]:
        """Replaces the data (only if the revision is still ``if_match``, if given); returns the new data."""
        return await self._write(lambda command_id: Set(command_id, self.sid, data, if_match, ttl))

    async def update(
        self, patch: dict[str, Any], *, if_match: str | None = None, ttl: int | None = None
    ) -> dict[str, Any]:
        """Shallow-merges ``patch`` on the server (its top-level keys replace the document's)."""
        return await self._write(lambda command_id: Update(command_id, self.sid, patch, if_match, ttl))

    async def set_ttl(self, ttl: int) -> None:
        """Expires the document ``ttl`` seconds from now; ``0`` removes the expiry."""
        await self._write(lambda command_id: SetTtl(command_id, self.sid, ttl))

    async def mutate(self, mutator: Mutator, *, max_attempts: int = MUTATE_MAX_ATTEMPTS) -> dict[str, Any]:
        """Read-modify-write without lost updates.

        ``mutator`` gets a copy of the latest known data and returns the new data (or ``None`` to give
        up and keep it). The result is written with ``if_match`` on the revision it was computed from;
        on a conflict (54103) the document is fetched again, after a short jittered backoff, and the
        mutator runs again, up to ``max_attempts`` times (then :class:`RevisionMismatchError`). A write
        refused by the rate limit (54009) is retried the same way.
        Returns the data written. If the connection drops mid-write, :class:`ConnectionClosedError` is
        raised and nothing is retried: the write may or may not have been applied.
        """
        for attempt in range(max_attempts):
            revision = self.revision
            proposed = mutator(copy.deepcopy(self._data))
            if proposed is None:
                return self.data
            try:
                return await self.set(proposed, if_match=revision)
            except (RevisionMismatchError, RateLimitedError):
                # Both mean "not written": a conflict, or a command refused before it ran.
                if attempt + 1 >= max_attempts:
                    raise
            await asyncio.sleep(_MUTATE_BACKOFF.delay(attempt))
            await self.refresh()
        raise ValueError("max_attempts must be at least 1")

    async def refresh(self) -> dict[str, Any]:
        """Fetches the document (events keep it current anyway); returns the latest known data."""
        await self._request_by_sid(Fetch, retry=True, on_reply=self._on_document_reply)
        return self.data

    async def remove(self) -> None:
        """Deletes the document; ``removed`` fires (once) with reason ``deleted``."""
        revision = self.revision

        def removed(result: Mapping[str, Any]) -> None:
            self._on_removed(DocumentRemoved(self.sid, self.unique_name, revision, "deleted"))

        await self._connection.request(lambda command_id: Remove(command_id, self.sid), on_reply=removed)

    async def close(self) -> None:
        """Unsubscribes: no more events. Open it again with :meth:`SyncClient.document`."""
        if self._ended:
            return
        self._close_locally()
        # Without a connection there is no subscription left to end.
        if not self._connection.closed:
            with contextlib.suppress(ConnectionClosedError, NotFoundError):
                await self._request_by_sid(Unsubscribe)

    async def _resubscribe(self) -> None:
        """After a reconnect: subscribes again from the revision held, and catches up if it is old."""
        if self._ended:
            return
        try:
            await self._connection.request(
                lambda command_id: Subscribe(command_id, self.sid, self.revision),
                on_reply=self._on_document_reply,
            )
        except NotFoundError:
            # Deleted (or expired) while we were away; which of the two is unknown.
            self._on_removed(DocumentRemoved(self.sid, self.unique_name, None, "deleted"))
            return
        if self._ended:  # closed while the subscribe was on its way: undo it
            with contextlib.suppress(ConnectionClosedError, NotFoundError):
                await self._request_by_sid(Unsubscribe)

    async def _request_by_sid(
        self,
        command: type[Fetch] | type[Unsubscribe],
        *,
        retry: bool = False,
        on_reply: ReplyHook | None = None,
    ) -> Mapping[str, Any]:
        return await self._connection.request(
            lambda command_id: command(command_id, self.sid), retry=retry, on_reply=on_reply
        )
