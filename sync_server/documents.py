"""The document service: the one door through which every adapter reaches documents.

REST, the native websocket protocol and Twilsock decode their wire formats into these calls and
render the results in their own shapes; everything that holds for every caller lives here once:
input validation and defaults, the ``default`` service alias, which operations need a system
principal, and (through the store's scripts, atomically with each operation) access control and
the event contract. Every call carries the :class:`~sync_server.principal.Principal` asking.

Adapters import the records they render (:class:`Document`, :class:`Page`, …) from here: nothing but
this module and the composition root (``app.py``) reaches into ``sync_server.store``.

Access control (Twilio's semantics, for services with ``acl_enabled``): a restricted principal needs
the document's ``read`` right to open, fetch or subscribe, ``write`` to set, update or change the
TTL, and ``manage`` to remove; it may not create documents, list them, or touch services and
permissions. System principals are never restricted. A refusal is ``ForbiddenError`` (403/54007).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sync_server import errors, metrics
from sync_server.principal import Principal
from sync_server.store.base import Store
from sync_server.store.models import Document, Page, Permission, Service
from sync_server.validation import (
    check_identity,
    check_ttl,
    check_unique_name,
    encode_data,
    normalize_revision,
    parse_data,
)

__all__ = [
    "Data",
    "Document",
    "DocumentService",
    "JsonText",
    "OpenMode",
    "Page",
    "Permission",
    "Service",
]

OpenMode = Literal["open_or_create", "open_existing", "create_new"]


@dataclass(frozen=True, slots=True)
class JsonText:
    """Document data still as JSON text (a REST form's ``Data``), parsed and checked by the service."""

    text: str


Data = Mapping[str, Any] | JsonText
"""Document data: a decoded JSON object (socket protocols) or JSON text (REST)."""


class DocumentService:
    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def account_sid(self) -> str:
        return self._store.account_sid

    def service_sid(self, ident: str | None) -> str:
        """The service ``ident`` names: a SID as it is, ``default`` (or None) the default service."""
        return self._store.resolve_service_sid(ident or "default")

    # -- documents -----------------------------------------------------------------------------------

    async def open(
        self,
        who: Principal,
        *,
        name: str | None,
        sid: str | None,
        mode: OpenMode,
        data: Data | None,
        ttl: int | None,
    ) -> tuple[Document, bool]:
        """Opens (and maybe creates) a document. Returns it and whether it was created now.

        ``open_or_create`` races safely with another creator of the same name: a 54301 from the
        store means someone else created it first, so the existing document is opened instead.
        """
        ident = name if name is not None else sid
        if mode != "create_new" and ident is not None:
            try:
                return await self._store.fetch_document(who, ident), False
            except errors.DocumentNotFound:
                if mode == "open_existing" or name is None:
                    raise
        try:
            created = await self._create(who, unique_name=name, data=data, ttl=ttl)
        except errors.UniqueNameConflict as exc:
            if mode == "create_new" or name is None:
                metrics.write_failed("create", exc)
                raise
            # Someone else created it first: an open after all, not a failed write.
            return await self._store.fetch_document(who, name), False
        except BaseException as exc:
            metrics.write_failed("create", exc)
            raise
        metrics.WRITES["create"]["ok"].inc()
        return created, True

    async def create(
        self, who: Principal, *, unique_name: str | None, data: Data | None, ttl: int | None
    ) -> Document:
        try:
            created = await self._create(who, unique_name=unique_name, data=data, ttl=ttl)
        except BaseException as exc:
            metrics.write_failed("create", exc)
            raise
        metrics.WRITES["create"]["ok"].inc()
        return created

    async def _create(
        self, who: Principal, *, unique_name: str | None, data: Data | None, ttl: int | None
    ) -> Document:
        if unique_name is not None:
            check_unique_name(unique_name)
        encoded = b"{}" if data is None else _encode(data)
        return await self._store.create_document(
            who, unique_name, encoded, 0 if ttl is None else check_ttl(ttl)
        )

    async def fetch(self, who: Principal, ident: str) -> Document:
        return await self._store.fetch_document(who, ident)

    async def write(
        self,
        who: Principal,
        ident: str,
        *,
        data: Data | None,
        merge: bool = False,
        if_match: str | None = None,
        ttl: int | None = None,
    ) -> Document:
        """Set (``merge`` false) or shallow-merge ``data``, and/or change the TTL, in one round trip.

        A TTL-only write (``data`` None) changes the expiry alone: the revision stays and no
        ``updated`` event is sent.
        """
        # Counted here, once for every adapter (metrics.py): replacing, merging, or the TTL alone.
        kind = "set_ttl" if data is None else "update" if merge else "set"
        try:
            if data is None and ttl is None:
                raise errors.ValidationError("Either Data or Ttl must be provided")
            revision = None if if_match is None else normalize_revision(if_match)
            written = await self._store.write_document(
                who,
                ident,
                data=None if data is None else _encode(data),
                mode="merge" if merge else "set",
                ttl=None if ttl is None else check_ttl(ttl),
                if_match=revision,
            )
        except BaseException as exc:
            metrics.write_failed(kind, exc)
            raise
        metrics.WRITES[kind]["ok"].inc()
        return written

    async def remove(self, who: Principal, ident: str) -> Document:
        """Deletes the document; returns it as it was."""
        try:
            removed = await self._store.delete_document(who, ident)
        except BaseException as exc:
            metrics.write_failed("remove", exc)
            raise
        metrics.WRITES["remove"]["ok"].inc()
        return removed

    async def list_documents(
        self, who: Principal, *, after: int | None, before: int | None, size: int
    ) -> Page[Document]:
        _require_system(who)
        return await self._store.list_documents(who.service_sid, after=after, before=before, size=size)

    # -- permissions (system principals only) --------------------------------------------------------

    async def fetch_permission(self, who: Principal, document: str, identity: str) -> Permission:
        _require_system(who)
        return await self._store.fetch_permission(who.service_sid, document, check_identity(identity))

    async def set_permission(
        self, who: Principal, document: str, identity: str, *, read: bool, write: bool, manage: bool
    ) -> Permission:
        """Grants exactly these rights; taking ``read`` away ends the identity's subscriptions."""
        _require_system(who)
        return await self._store.set_permission(
            who.service_sid, document, check_identity(identity), read, write, manage
        )

    async def delete_permission(self, who: Principal, document: str, identity: str) -> None:
        _require_system(who)
        await self._store.delete_permission(who.service_sid, document, check_identity(identity))

    async def list_permissions(self, who: Principal, document: str) -> tuple[str, list[Permission]]:
        _require_system(who)
        return await self._store.list_permissions(who.service_sid, document)

    # -- services (system principals only) -----------------------------------------------------------

    async def create_service(self, who: Principal, settings: dict[str, str]) -> Service:
        _require_system(who)
        return await self._store.create_service(settings)

    async def fetch_service(self, who: Principal) -> Service:
        _require_system(who)
        return await self._store.fetch_service(who.service_sid)

    async def update_service(self, who: Principal, settings: dict[str, str]) -> Service:
        """Turning access control on ends every subscription its permissions do not allow."""
        _require_system(who)
        return await self._store.update_service(who.service_sid, settings)

    async def delete_service(self, who: Principal) -> None:
        _require_system(who)
        await self._store.delete_service(who.service_sid)

    async def list_services(
        self, who: Principal, *, after: int | None, before: int | None, size: int
    ) -> Page[Service]:
        _require_system(who)
        return await self._store.list_services(after=after, before=before, size=size)


def _encode(data: Data) -> bytes:
    if isinstance(data, JsonText):
        return parse_data(data.text)
    return encode_data(data)


def _require_system(who: Principal) -> None:
    if who.restricted:
        raise errors.ForbiddenError("Only the service's backend may do this")
