"""The store's contract: what the document service may rely on.

Only the concrete store (``redis_store.py``) imports ``redis``, and only the document service
(``documents.py``) and the composition root (``app.py``) use a store. Every method is one Redis round
trip unless its docstring says otherwise.
"""

from __future__ import annotations

from typing import Literal, Protocol

from sync_server.principal import Principal
from sync_server.store.models import Document, Page, Permission, Service

WriteMode = Literal["set", "merge"]


class DocumentStore(Protocol):
    """Documents of one account, addressed by the principal's service and a document SID or name.

    Atomicity: every write is one Lua script: the permission check, the revision check, the revision
    bump (exactly +1), the data and TTL change, the index updates, the PUBLISH of the event and, for a
    service with a webhook, its entry in the partition's webhook outbox happen together or not at all.
    Events on a document's channel (and webhooks in its outbox) are therefore in revision order, none
    is sent for a write that failed, and a permission change can never race a write through.

    Access control: a restricted principal (``Principal.restricted``) on a service with
    ``acl_enabled`` needs the document's read right to fetch, write to write, manage to delete, and
    may not create; a refusal is ``ForbiddenError`` (54007), for a missing document too. Events carry
    the principal's identity and endpoint as their writer.

    Expiry: a document whose TTL has passed is gone for every method at once (Redis hides the key),
    and its unique name is free. Index entries and the ``removed`` event follow within one sweep
    interval (:meth:`sweep_expired`).

    Errors: ``ServiceNotFound`` (54050), ``DocumentNotFound``, ``ForbiddenError``,
    ``UniqueNameConflict`` (54301), ``RevisionMismatch`` (54103), ``DataTooLarge`` (54006, merges
    only: other data is checked by the caller), ``UnavailableError`` when Redis cannot be reached.
    """

    async def create_document(
        self, who: Principal, unique_name: str | None, data: bytes, ttl: int
    ) -> Document: ...

    async def fetch_document(self, who: Principal, ident: str) -> Document: ...

    async def write_document(
        self,
        who: Principal,
        ident: str,
        *,
        data: bytes | None,
        mode: WriteMode = "set",
        ttl: int | None = None,
        if_match: str | None = None,
    ) -> Document:
        """Overwrites or merges ``data`` and/or sets the TTL (None keeps it, 0 clears it).

        ``data`` None is a TTL-only write: it changes the expiry alone, keeps the revision and
        publishes no event."""
        ...

    async def delete_document(self, who: Principal, ident: str) -> Document:
        """Deletes and returns the document as it was; publishes ``removed``."""
        ...

    async def list_documents(
        self, service_sid: str, *, after: int | None, before: int | None, size: int
    ) -> Page[Document]:
        """One page in creation order after (or before) a cursor, merged over the partitions: O(size +
        partitions) Redis work, whatever the number of documents; a page may hold fewer than
        ``size`` items while ``more`` is true."""
        ...

    async def sweep_expired(self, limit: int = 500) -> int:
        """Removes due documents of every service and publishes their ``removed`` events.

        Safe to run from any number of processes at once: each expiry is published exactly once.
        One script per partition, whatever the number of services. A document whose hash vanished
        before its indexed expiry (an operator's PEXPIRE, volatile-* eviction) is found by a sampled
        audit of the expiry index. Each sweep also purges a bounded step of deleted services'
        documents, publishing their ``removed`` events (service_deleted).
        """
        ...


class ServiceStore(Protocol):
    """Services of the account. ``default`` is an alias for the account's default service, which is
    created on first use and keeps the same SID across restarts."""

    account_sid: str

    def resolve_service_sid(self, ident: str) -> str:
        """Maps ``default`` to the default service's SID; any other value is returned as it is."""
        ...

    async def create_service(self, settings: dict[str, str]) -> Service: ...

    async def fetch_service(self, service_sid: str) -> Service: ...

    async def update_service(self, service_sid: str, settings: dict[str, str]) -> Service:
        """Turning ``acl_enabled`` on publishes ``revoked`` on every document of the service."""
        ...

    async def delete_service(self, service_sid: str) -> None:
        """Deletes the service: gone for every reader at once; its documents are purged by the
        following sweeps in bounded steps, which publish ``removed`` for each."""
        ...

    async def list_services(self, *, after: int | None, before: int | None, size: int) -> Page[Service]: ...


class PermissionStore(Protocol):
    async def fetch_permission(self, service_sid: str, document: str, identity: str) -> Permission: ...

    async def set_permission(
        self, service_sid: str, document: str, identity: str, read: bool, write: bool, manage: bool
    ) -> Permission:
        """Taking a read right away (with access control on) publishes ``revoked`` for the identity."""
        ...

    async def delete_permission(self, service_sid: str, document: str, identity: str) -> None: ...

    async def list_permissions(self, service_sid: str, document: str) -> tuple[str, list[Permission]]:
        """The document's SID and all its permissions, sorted by identity."""
        ...


class Store(DocumentStore, ServiceStore, PermissionStore, Protocol):
    """Everything the document service needs from one store."""

    async def ping(self) -> bool:
        """Whether the store answers (for health checks); never raises."""
        ...

    async def close(self) -> None: ...
