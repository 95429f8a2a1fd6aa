"""What the store returns: plain frozen records, decoded from the Lua scripts' replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Document:
    service_sid: str
    sid: str
    unique_name: str | None
    revision: int
    data: bytes
    """The document's data as compact JSON text; it is embedded into responses without re-parsing."""
    date_created: int
    date_updated: int
    date_expires: int | None
    created_by: str

    @property
    def revision_text(self) -> str:
        """The revision as clients see it: a lowercase hex counter string."""
        return format(self.revision, "x")

    @classmethod
    def from_reply(cls, service_sid: str, reply: Sequence[bytes | int]) -> Document:
        """Decodes ``sid, n, d, r, c, u, x, b`` (the shape of ``doc_reply`` in lua/_prelude.lua)."""
        sid, name, data, revision, created, updated, expires, created_by = reply[:8]
        return cls(
            service_sid=service_sid,
            sid=_text(sid),
            unique_name=_text(name) or None,
            revision=int(revision),
            data=data if isinstance(data, bytes) else str(data).encode(),
            date_created=int(created),
            date_updated=int(updated),
            date_expires=int(expires) or None,
            created_by=_text(created_by),
        )


@dataclass(frozen=True, slots=True)
class Service:
    sid: str
    unique_name: str | None
    friendly_name: str | None
    webhook_url: str | None
    webhooks_from_rest_enabled: bool
    reachability_webhooks_enabled: bool
    reachability_debouncing_enabled: bool
    reachability_debouncing_window: int
    acl_enabled: bool
    date_created: int
    date_updated: int


@dataclass(frozen=True, slots=True)
class Permission:
    service_sid: str
    document_sid: str
    identity: str
    read: bool
    write: bool
    manage: bool


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing in creation order, with the cursors to move on from it."""

    items: list[T]
    more: bool
    """Whether more items lie beyond this page in the direction it was read."""
    first_cursor: int | None = None
    last_cursor: int | None = None


def _text(value: bytes | int | str) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
