"""Document operations for authenticated clients, shared by every websocket protocol adapter.

The adapters (native protocol, Twilsock) translate their wire messages into these calls and the
results back; validation, defaults and Twilio error codes live here once. A :class:`Principal` is
who is asking: an identity and the one service its credentials reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from protocol import DocumentWire, UpdatedDocumentWire
from sync_server import errors
from sync_server.dates import format_optional, format_timestamp
from sync_server.events import DocumentEvent
from sync_server.store.models import Document
from sync_server.store.redis_store import RedisStore
from sync_server.validation import check_ttl, check_unique_name, encode_data, normalize_revision

OpenMode = Literal["open_or_create", "open_existing", "create_new"]


@dataclass(frozen=True, slots=True)
class Principal:
    identity: str
    service_sid: str
    """The real service SID (the ``default`` alias already resolved)."""


class SyncCore:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def service_for(self, grant_service: str | None) -> str:
        """The service a token's ``data_sync`` grant names (``default`` when it names none)."""
        return self.store.resolve_service_sid(grant_service or "default")

    async def open(
        self,
        who: Principal,
        *,
        name: str | None,
        sid: str | None,
        mode: OpenMode,
        data: dict[str, Any] | None,
        ttl: int | None,
    ) -> tuple[Document, bool]:
        """Opens (and maybe creates) a document. Returns it and whether it was created now.

        ``open_or_create`` races safely with another creator of the same name: a 54301 from the
        store means someone else created it first, so the existing document is opened instead.
        """
        ident = name if name is not None else sid
        if mode != "create_new" and ident is not None:
            try:
                return await self.store.fetch_document(who.service_sid, ident), False
            except errors.DocumentNotFound:
                if mode == "open_existing" or name is None:
                    raise
        if name is not None:
            check_unique_name(name)
        encoded = encode_data({} if data is None else data)
        ttl_value = 0 if ttl is None else check_ttl(ttl)
        try:
            doc = await self.store.create_document(who.service_sid, name, encoded, ttl_value, who.identity)
        except errors.UniqueNameConflict:
            if mode == "create_new" or name is None:
                raise
            return await self.store.fetch_document(who.service_sid, name), False
        return doc, True

    async def fetch(self, who: Principal, doc: str) -> Document:
        return await self.store.fetch_document(who.service_sid, doc)

    async def write(
        self,
        who: Principal,
        doc: str,
        *,
        data: dict[str, Any] | None,
        merge: bool = False,
        if_match: str | None = None,
        ttl: int | None = None,
    ) -> Document:
        """Set (``merge`` false) or shallow-merge ``data``, and/or change the TTL, in one round trip."""
        encoded = None if data is None else encode_data(data)
        return await self.store.write_document(
            who.service_sid,
            doc,
            data=encoded,
            mode="merge" if merge else "set",
            ttl=None if ttl is None else check_ttl(ttl),
            if_match=None if if_match is None else normalize_revision(if_match),
        )

    async def remove(self, who: Principal, doc: str) -> Document:
        return await self.store.delete_document(who.service_sid, doc)


def document_wire(doc: Document) -> DocumentWire:
    """The document as the native protocol carries it (data embedded as stored JSON text)."""
    return {
        "sid": doc.sid,
        "unique_name": doc.unique_name,
        "revision": doc.revision_text,
        "data": orjson.Fragment(doc.data),
        "date_created": format_timestamp(doc.date_created),
        "date_updated": format_timestamp(doc.date_updated),
        "date_expires": format_optional(doc.date_expires),
        "created_by": doc.created_by,
    }


def event_document_wire(event: DocumentEvent) -> UpdatedDocumentWire:
    """The document of an ``updated`` event, with the revision it replaced."""
    assert event.revision is not None and event.data is not None
    return {
        "sid": event.sid,
        "unique_name": event.unique_name,
        "revision": format(event.revision, "x"),
        "previous_revision": format(event.revision - 1, "x") if event.revision > 0 else None,
        "data": orjson.Fragment(event.data),
        "date_created": format_timestamp(event.date_created),
        "date_updated": format_timestamp(event.date_updated),
        "date_expires": format_optional(event.date_expires),
        "created_by": event.created_by,
    }
