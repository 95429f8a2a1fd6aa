"""The client: one connection to a sync server, and the documents opened through it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal

from protocol import Open, OpenMode, Removed, SubscriptionEnded, Updated
from sync_client.backoff import Backoff
from sync_client.connection import DEFAULT_MAX_FRAME, Connection, Credentials, DocumentPush, TokenProvider
from sync_client.document import SyncDocument
from sync_client.errors import ConnectionClosedError, RateLimitedError, RequestTimeoutError, SyncClientError
from sync_client.events import Callback, ConnectionState, DocumentAccessRevoked, DocumentRemoved

__all__ = ["SyncClient"]

log = logging.getLogger("sync_client")

_DOCUMENT_SID = re.compile(r"ET[0-9a-f]{32}")
# Resubscribes after a reconnect run this many at a time; transient refusals are retried after a backoff.
RESUBSCRIBE_CONCURRENCY = 16


class SyncClient:
    """A connection to a sync server that reconnects by itself and keeps its documents current.

    Give exactly one kind of credentials: an access ``token`` (optionally with a ``token_provider``
    called for a fresh one when the server warns that it expires, or closes with 4410), a
    ``token_provider`` alone, or ``basic=(account or API key SID, secret)`` with an optional
    ``service`` (default: the default service) and ``identity`` (default: ``system``).

    ``url`` is the server's base URL (``http://host:port``) or its websocket URL (``ws://host:port/ws``).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        basic: tuple[str, str] | None = None,
        service: str | None = None,
        identity: str | None = None,
        backoff: Backoff | None = None,
        request_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if basic is not None and (token is not None or token_provider is not None):
            raise ValueError("give either basic credentials or a token (provider), not both")
        if basic is None and token is None and token_provider is None:
            raise ValueError("credentials are required: token, token_provider or basic")
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout
        self._docs: dict[str, SyncDocument] = {}
        self._connection = Connection(
            url,
            Credentials(token, token_provider, basic, service, identity),
            on_push=self._on_push,
            on_connected=self._resubscribe_all,
            backoff=self._backoff,
            request_timeout=request_timeout,
            open_timeout=min(connect_timeout, 10.0),
            max_frame_bytes=max_frame_bytes,
        )

    # -- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connects (retrying for up to ``connect_timeout`` seconds); raises
        :class:`ConnectionDeniedError` if the credentials are refused."""
        await self._connection.start(self._connect_timeout)

    async def close(self) -> None:
        """Closes the connection; open documents stop receiving events, pending commands fail."""
        await self._connection.close()
        for doc in tuple(self._docs.values()):
            doc._close_locally()

    async def __aenter__(self) -> SyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def state(self) -> ConnectionState:
        return self._connection.state

    @property
    def identity(self) -> str | None:
        info = self._connection.info
        return None if info is None else info.identity

    @property
    def service_sid(self) -> str | None:
        info = self._connection.info
        return None if info is None else info.service_sid

    @property
    def connection_id(self) -> str | None:
        """The server's id of the current (or last) websocket: it changes on every reconnect."""
        info = self._connection.info
        return None if info is None else info.connection_id

    def on(
        self, event: Literal["connection_state"], callback: Callback[ConnectionState]
    ) -> Callable[[], None]:
        """Calls ``callback(state)`` on every change of :attr:`state`; returns a function that stops it."""
        if event != "connection_state":
            raise ValueError(f"unknown client event {event!r}: use 'connection_state'")
        return self._connection.state_changed.add(callback)

    # -- documents --------------------------------------------------------------------------------

    async def document(
        self,
        name_or_sid: str | None = None,
        *,
        mode: OpenMode = "open_or_create",
        data: dict[str, Any] | None = None,
        ttl: int | None = None,
    ) -> SyncDocument:
        """Opens a document by unique name or SID (``ET…``) and subscribes to it.

        ``mode``: ``open_or_create`` (default), ``open_existing`` (:class:`NotFoundError` if missing) or
        ``create_new`` (:class:`UniqueNameConflictError` if the name exists; no name: an anonymous
        document). ``data`` and ``ttl`` apply only if the document is created. A document that is already
        open on this client is returned as the same object.
        """
        sid = name_or_sid if name_or_sid is not None and _DOCUMENT_SID.fullmatch(name_or_sid) else None
        name = None if sid is not None else name_or_sid
        opened: list[SyncDocument] = []

        def adopt(result: Mapping[str, Any]) -> None:
            opened.append(self._adopt(result["document"]))

        await self._connection.request(
            lambda command_id: Open(command_id, name, sid, mode, data, ttl, subscribe=True),
            # Opening again cannot create twice: the second attempt finds the first one's document.
            retry=mode != "create_new",
            on_reply=adopt,
        )
        return opened[-1]

    def _adopt(self, wire: Mapping[str, Any]) -> SyncDocument:
        doc = self._docs.get(wire["sid"])
        if doc is None:
            doc = self._docs[wire["sid"]] = SyncDocument(self._connection, wire, self._forget)
        else:
            doc._apply(wire)
        return doc

    def _forget(self, doc: SyncDocument) -> None:
        if self._docs.get(doc.sid) is doc:
            del self._docs[doc.sid]

    def _on_push(self, message: DocumentPush) -> None:
        if isinstance(message, Updated):
            doc = self._docs.get(message.document["sid"])
            if doc is not None:
                doc._on_pushed_update(message.document)
        elif isinstance(message, Removed):
            doc = self._docs.get(message.sid)
            if doc is not None:
                removed = DocumentRemoved(message.sid, message.unique_name, message.revision, message.reason)
                doc._on_removed(removed)
        elif isinstance(message, SubscriptionEnded):
            doc = self._docs.get(message.sid)
            if doc is not None:
                doc._on_ended(
                    DocumentAccessRevoked(message.sid, message.unique_name, message.code, message.message)
                )

    async def _resubscribe_all(self) -> None:
        """After a (re)connect: every open document subscribes again from the revision it holds.

        A resubscribe the server could not serve for now (20503 while its Redis is down or restarting,
        5xx, a rate-limit refusal, no reply in time) is retried with the reconnect backoff until it
        succeeds or the document is gone (``removed``); the retries end with the connection, and the
        next one starts over. This task is cancelled when the connection drops.
        """
        limit = asyncio.Semaphore(RESUBSCRIBE_CONCURRENCY)

        async def resubscribe(doc: SyncDocument) -> None:
            for attempt in itertools.count():
                try:
                    async with limit:
                        await doc._resubscribe()
                    return
                except ConnectionClosedError:
                    return  # the next connection resubscribes again
                except SyncClientError as exc:
                    if not _worth_retrying(exc):
                        log.warning("resubscribing to %s failed: %r", doc.sid, exc)
                        return
                    log.debug("resubscribing to %s failed (%r); retrying", doc.sid, exc)
                # Outside the semaphore: a document waiting to retry holds up no other.
                await asyncio.sleep(self._backoff.delay(attempt))

        await asyncio.gather(*(resubscribe(doc) for doc in tuple(self._docs.values())))


def _worth_retrying(error: SyncClientError) -> bool:
    """Refusals that say "not now" rather than "never": the same subscribe may succeed later."""
    return isinstance(error, RateLimitedError | RequestTimeoutError) or error.status >= 500
