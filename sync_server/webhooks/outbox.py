"""The contract between the webhook deliverer and the outbox it delivers from (the Redis side is
``store/webhook_outbox.py``).

The outbox is one stream per partition of the key layout, appended by the write scripts; a consumer
group shared by every server process tracks what was read and not yet settled. A process delivers a
partition only while it holds the partition's lease: one deliverer per partition keeps each
document's webhooks in order. A webhook that could not be delivered at once moves (atomically, with
its acknowledgement) to its service's backlog list in the partition, and from the backlog's head to
the partition's dead letters when its retries are over.

Every method is one Redis round trip unless its docstring says otherwise, and raises
``errors.UnavailableError`` (or another ``errors.SyncError``) when Redis cannot be reached or refuses;
the deliverer then starts the partition afresh from what Redis holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a partition's outbox stream, as the write script appended it."""

    partition: int
    id: str
    """The stream id, ``<milliseconds>-<sequence>``: ordered within the partition, and dated."""
    fields: Mapping[str, str]
    """See ``store/lua/_prelude.lua`` (``outbox_append``)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    entries: list[Entry]
    """Entries another consumer held (or this one, before a restart), oldest first."""
    trimmed: int
    """Entries held that the stream no longer has (trimmed at its bound before delivery)."""


class Outbox(Protocol):
    consumer: str
    """This process's name in the consumer group (and on the leases it holds)."""

    @property
    def multi_key_reads(self) -> bool:
        """Whether one :meth:`read` may cover several partitions (standalone Redis); on a cluster each
        partition is read on its own (a blocking read cannot span slots)."""

    async def prepare(self, partition: int) -> None:
        """Creates the partition's stream and consumer group if they do not exist yet."""

    async def join(self, ttl: float) -> int:
        """Announces this process as a deliverer for ``ttl`` seconds; returns how many are live."""

    async def leave(self) -> None: ...

    async def hold(self, partition: int, ttl: float) -> int:
        """Takes (2) or renews (1) the partition's lease for ``ttl`` seconds; 0 if another holds it."""

    async def release(self, partition: int) -> None:
        """Gives the lease back (if still held), for another process to take at once."""

    async def read(self, partitions: Sequence[int], count: int, block: float) -> list[Entry]:
        """New entries (``>``) of the partitions, at most ``count`` of each, oldest first per partition,
        waiting up to ``block`` seconds for one; on a connection of its own (never the shared one),
        so a blocking read holds up no other command."""

    async def claim(self, partition: int, min_idle: float, exclude: frozenset[str]) -> Claimed:
        """Takes over the partition's entries that were read but not settled and have been idle for
        ``min_idle`` seconds (0: all of them), whoever held them, but those whose ids are in
        ``exclude`` (held in memory by this process). Several round trips for many entries."""

    async def ack(self, partition: int, ids: Sequence[str]) -> None:
        """Settles delivered entries."""

    async def trim(self, partition: int, unread: str) -> None:
        """Removes settled entries from the stream: those before ``unread`` (the first id not read yet)
        and before every entry still pending."""

    async def park(self, partition: int, service_sid: str, entry_id: str, item: bytes) -> int:
        """Moves an entry to the end of its service's backlog (settling it in the stream). Returns the
        backlog's length, or -1 if the lease was lost (nothing done)."""

    async def backlogged(self, partition: int) -> list[str]:
        """The services with a backlog in the partition."""

    async def head(self, partition: int, service_sid: str) -> bytes | None:
        """The oldest item of the service's backlog, or None when it is empty."""

    async def pop(self, partition: int, service_sid: str, item: bytes, dead: bytes | None) -> int:
        """Removes ``item`` from the head of the service's backlog (delivered), or moves it to the dead
        letters as ``dead``. Returns the backlog's remaining length; -1 if the lease was lost, -2 if
        the head is not ``item`` (nothing done in both cases)."""

    async def waiting(self, partition: int) -> int:
        """How many webhooks of the partition are not delivered yet (stream and backlogs)."""

    async def dead_letters(self, partition: int) -> list[bytes]:
        """The partition's dead letters, oldest first."""

    async def replay(self, partition: int, item: bytes, fields: Mapping[str, str]) -> bool:
        """Moves one dead letter back into the outbox as a new entry of ``fields``; False if it is no
        longer a dead letter."""

    async def purge(self, partition: int, item: bytes) -> bool:
        """Removes one dead letter; False if it is no longer one."""

    async def aclose(self) -> None: ...
