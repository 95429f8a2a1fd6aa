"""What an operator does with dead letters (``sync-server webhooks dead-letters``): list them, replay
them (each goes back into the outbox as a new entry with its idempotency token, and is delivered like
a new change, with a fresh retry horizon), or purge them. Over the outbox contract, so the CLI is
the only part that knows it is Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sync_server.webhooks.events import Waiting, decode_item, describe
from sync_server.webhooks.outbox import Outbox

PARTITIONS = 64


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    item: bytes
    """The list item exactly as stored: what replay and purge name."""
    waiting: Waiting

    def as_json(self) -> dict[str, Any]:
        webhook = self.waiting.webhook
        return {
            "token": webhook.token,
            "service_sid": webhook.service_sid,
            "event_type": webhook.event_type,
            "document_sid": webhook.document_sid,
            "document_unique_name": webhook.unique_name,
            "document_revision": webhook.revision,
            "identity": webhook.identity,
            "endpoint_id": webhook.endpoint_id,
            "url": describe(webhook.url),
            "attempts": self.waiting.attempts,
            "last_error": self.waiting.error,
            "date_written": _iso(webhook.written_at),
            "date_dead": None if self.waiting.dead_at is None else _iso(self.waiting.dead_at),
        }

    def line(self) -> str:
        webhook = self.waiting.webhook
        revision = "-" if webhook.revision is None else str(webhook.revision)
        dead = "-" if self.waiting.dead_at is None else _iso(self.waiting.dead_at)
        return (
            f"{webhook.token}  {webhook.service_sid}  {webhook.event_type}  {webhook.document_sid}  "
            f"rev {revision}  {self.waiting.attempts} attempts  dead since {dead}  "
            f"{describe(webhook.url)}: {self.waiting.error or 'not attempted'}"
        )


async def collect(
    outbox: Outbox, *, service_sid: str | None = None, tokens: Iterable[str] = ()
) -> list[DeadLetter]:
    """Every dead letter (of ``service_sid``; with one of ``tokens``), oldest first per partition."""
    wanted = set(tokens)
    lists = await asyncio.gather(*(outbox.dead_letters(p) for p in range(PARTITIONS)))
    found = []
    for partition, items in enumerate(lists):
        for item in items:
            try:
                waiting = decode_item(partition, item)
            except (KeyError, ValueError):
                continue  # not ours to judge: listed by nothing, left in place
            if service_sid is not None and waiting.webhook.service_sid != service_sid:
                continue
            if wanted and waiting.webhook.token not in wanted:
                continue
            found.append(DeadLetter(partition, item, waiting))
    return found


async def replay(outbox: Outbox, letters: Iterable[DeadLetter]) -> int:
    """Replays each (in order, so a document's stay in revision order); returns how many were."""
    done = 0
    for letter in letters:
        done += await outbox.replay(letter.partition, letter.item, letter.waiting.webhook.fields())
    return done


async def purge(outbox: Outbox, letters: Iterable[DeadLetter]) -> int:
    done = 0
    for letter in letters:
        done += await outbox.purge(letter.partition, letter.item)
    return done


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
