"""Document events as the write scripts publish them, decoded once per process.

The Lua scripts publish a compact JSON header, and for ``updated`` a newline and then the data
(see ``publish_updated`` and ``publish_removed`` in ``store/lua/_prelude.lua``). The hub decodes
each message once into a :class:`DocumentEvent`; every protocol adapter then asks it for its own
wire frame, which is built on first use and cached on the event, so a frame is encoded once per
process and protocol, never once per subscriber.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson

EventKind = Literal["updated", "removed", "revoked"]
F = TypeVar("F")


@dataclass(slots=True)
class DocumentEvent:
    """One change of one document, as every subscriber of its channel sees it.

    ``revoked`` is a control event, never shown to clients as such: it ends the subscriptions of
    the restricted principals it names (see :meth:`revokes`).
    """

    kind: EventKind
    service_sid: str
    sid: str
    unique_name: str | None
    revision: int | None
    """The new revision for ``updated``; the last one for ``removed`` (None when expiry removed it)."""
    data: bytes | None = None
    """The new data as compact JSON text (``updated`` only)."""
    date_created: int = 0
    date_updated: int = 0
    date_expires: int | None = None
    created_by: str = ""
    reason: str = ""
    """Why a document was removed: ``deleted``, ``expired`` or ``service_deleted``."""
    writer: str | None = None
    """Who made the change: an identity (``system`` for REST); None for expiry and service deletion."""
    writer_endpoint: str | None = None
    """The connection the change came through; None for REST."""
    revoked_identity: str | None = None
    """``revoked`` only: the identity whose read right went away, or None when access control was
    turned on for the service (then every restricted identity outside :attr:`keep` lost it)."""
    keep: frozenset[str] = frozenset()
    """``revoked`` with no identity: the identities that may still read the document."""
    _frames: dict[str, Any] = field(default_factory=dict, repr=False)

    def revokes(self, identity: str) -> bool:
        """Whether this ``revoked`` event ends a restricted subscriber's subscription."""
        if self.revoked_identity is not None:
            return self.revoked_identity == identity
        return identity not in self.keep

    def frame(self, protocol: str, build: Callable[[DocumentEvent], F]) -> F:
        """The frame of ``protocol`` for this event, built by ``build`` at most once."""
        cached: F | None = self._frames.get(protocol)
        if cached is None:
            cached = self._frames[protocol] = build(self)
        return cached


def decode_event(payload: bytes) -> DocumentEvent:
    """Decodes one published message. Raises ``ValueError`` for anything the scripts did not write."""
    header, _, data = payload.partition(b"\n")
    raw: dict[str, Any] = orjson.loads(header)
    kind = raw["e"]
    if kind == "updated":
        return DocumentEvent(
            kind="updated",
            service_sid=raw["s"],
            sid=raw["sid"],
            unique_name=raw["n"],
            revision=int(raw["r"]),
            data=data,
            date_created=int(raw["c"]),
            date_updated=int(raw["u"]),
            date_expires=int(raw["x"]) or None,
            created_by=raw["b"],
            writer=raw.get("w"),
            writer_endpoint=raw.get("ep"),
        )
    if kind == "removed":
        revision = raw["r"]
        return DocumentEvent(
            kind="removed",
            service_sid=raw["s"],
            sid=raw["sid"],
            unique_name=raw["n"],
            revision=None if revision is None else int(revision),
            reason=raw["why"],
            writer=raw.get("w"),
            writer_endpoint=raw.get("ep"),
        )
    if kind == "revoked":
        return DocumentEvent(
            kind="revoked",
            service_sid=raw["s"],
            sid=raw["sid"],
            unique_name=None,
            revision=None,
            revoked_identity=raw["i"],
            keep=frozenset(raw.get("keep") or ()),
        )
    raise ValueError(f"unknown event kind {kind!r}")
