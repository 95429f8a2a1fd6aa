"""A webhook as the outbox holds it, the form Twilio Sync posts for it, and how it is kept in Redis
lists (a service's backlog, the dead letters) while it waits.

The form (``application/x-www-form-urlencoded``), Twilio's parameters: ``AccountSid``,
``ServiceSid``, ``EventType`` (``document_created``, ``document_updated``, ``document_removed``),
``Identity`` (the access token's identity; ``system`` for REST and for the server's own changes),
``EndpointId`` (the client connection; absent for REST), ``DocumentSid``, ``DocumentUniqueName``
(absent for a document without one), ``DocumentRevision`` (an integer, as Twilio documents it:
decimal, where the REST API and the SDKs show the same revision as lowercase hex text; absent on the
``document_removed`` of an expiry, when the revision is gone with the document) and ``DocumentData``
(the data as compact JSON; not on ``document_removed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from sync_server.webhooks.outbox import Entry

EVENT_TYPES = ("document_created", "document_updated", "document_removed")


@dataclass(frozen=True, slots=True)
class Webhook:
    partition: int
    entry_id: str
    """The id of its entry in the partition's outbox: it orders and dates the webhook."""
    token: str
    """The idempotency token (``I-Twilio-Idempotency-Token``): the same on every attempt, replays too."""
    url: str
    event_type: str
    service_sid: str
    document_sid: str
    unique_name: str | None
    revision: int | None
    data: str | None
    identity: str
    endpoint_id: str | None

    @property
    def written_at(self) -> float:
        """Unix time the change was written (or the webhook replayed): its entry id's milliseconds."""
        return int(self.entry_id.partition("-")[0]) / 1000

    def params(self, account_sid: str) -> dict[str, str]:
        """The form Twilio posts for this change."""
        params = {
            "AccountSid": account_sid,
            "ServiceSid": self.service_sid,
            "EventType": self.event_type,
            "Identity": self.identity,
            "DocumentSid": self.document_sid,
        }
        if self.endpoint_id:
            params["EndpointId"] = self.endpoint_id
        if self.unique_name:
            params["DocumentUniqueName"] = self.unique_name
        if self.revision is not None:
            params["DocumentRevision"] = str(self.revision)
        if self.data is not None:
            params["DocumentData"] = self.data
        return params

    def fields(self) -> dict[str, str]:
        """The outbox entry's fields again (``store/lua/_prelude.lua``), with the token: a replay
        appends these."""
        fields = {
            "e": self.event_type,
            "s": self.service_sid,
            "sid": self.document_sid,
            "n": self.unique_name or "",
            "r": "" if self.revision is None else str(self.revision),
            "w": self.identity,
            "ep": self.endpoint_id or "",
            "u": self.url,
            "k": self.token,
        }
        if self.data is not None:
            fields["d"] = self.data
        return fields


@dataclass(frozen=True, slots=True)
class Dropped:
    """The outbox reached its bound while no process delivered: this many entries before it are lost."""

    count: int


def describe(url: str) -> str:
    """What logs may show of a webhook URL: scheme, host, port and path (no credentials, no query)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{parts.path}"


def default_token(partition: int, entry_id: str) -> str:
    return f"p{partition}-{entry_id}"


def from_entry(entry: Entry) -> Webhook | Dropped:
    """Decodes an outbox entry. Raises ``KeyError`` or ``ValueError`` for one the scripts did not write."""
    fields = entry.fields
    if "lost" in fields:
        return Dropped(int(fields["lost"]))
    return _webhook(entry.partition, entry.id, fields)


def _webhook(partition: int, entry_id: str, fields: Mapping[str, str]) -> Webhook:
    event_type = fields["e"]
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    revision = fields.get("r", "")
    return Webhook(
        partition=partition,
        entry_id=entry_id,
        token=fields.get("k") or default_token(partition, entry_id),
        url=fields["u"],
        event_type=event_type,
        service_sid=fields["s"],
        document_sid=fields["sid"],
        unique_name=fields.get("n") or None,
        revision=int(revision) if revision else None,
        data=fields.get("d"),
        identity=fields.get("w") or "system",
        endpoint_id=fields.get("ep") or None,
    )


@dataclass(frozen=True, slots=True)
class Waiting:
    """A webhook in a backlog or among the dead letters, with what its attempts so far said."""

    webhook: Webhook
    attempts: int
    error: str
    """What the last attempt said (``HTTP 503``, ``timed out after 15 s``…); '' when none was made."""
    dead_at: float | None = None
    """For a dead letter: the Unix time it was given up on."""


def encode_item(waiting: Waiting) -> bytes:
    """The list item of a waiting webhook: the entry's id and fields (the data as text), compact."""
    item: dict[str, Any] = {
        "i": waiting.webhook.entry_id,
        "f": waiting.webhook.fields(),
        "a": waiting.attempts,
        "err": waiting.error,
    }
    if waiting.dead_at is not None:
        item["dead"] = round(waiting.dead_at, 3)
    return orjson.dumps(item)


def decode_item(partition: int, item: bytes) -> Waiting:
    """The inverse of :func:`encode_item`. Raises ``ValueError`` or ``KeyError`` for anything else."""
    raw = orjson.loads(item)
    return Waiting(
        webhook=_webhook(partition, raw["i"], raw["f"]),
        attempts=int(raw.get("a", 0)),
        error=str(raw.get("err", "")),
        dead_at=raw.get("dead"),
    )
