"""Which server process delivers which partition's webhooks, and the reading of new ones.

Every process that delivers (``SYNC_WEBHOOKS``, on by default) announces itself (``join``) and holds
the leases of its fair share of the 64 partitions: ``ceil(64 / live processes)``, renewed every third
of the lease time. A process that started later takes free leases as the others give theirs back
(after their requests in flight finished); a process that died stops renewing, and its leases lapse
after ``lease`` seconds (15 by default), so another takes its partitions over, with every entry it
had read and not settled (``claim``), within about that time plus one renewal period.

New entries are read with blocking reads on the outbox's own connection (one read for every held
partition on a single Redis; one per partition on a cluster, where a read cannot span slots). Every
ten seconds each held partition also claims entries that have been idle for 30 s in another
consumer's hands (read just as a lease changed hands), so none is left behind for long.

The reader stops reading while too many webhooks are held in memory (:data:`MEMORY_LIMIT`); lanes
beyond their own limit move webhooks to Redis, so that is brief.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

from sync_server import errors, metrics
from sync_server.webhooks.lanes import LeaseLost, Partition
from sync_server.webhooks.outbox import Outbox
from sync_server.webhooks.retry import RetryPolicy
from sync_server.webhooks.sender import Sender

log = logging.getLogger("sync_server.webhooks")

PARTITIONS = 64
"""As the key layout's (store/keys.py): the webhooks package does not import the store."""
READ_COUNT = 200
READ_BLOCK = 1.0
"""Seconds a read waits for new entries; a partition taken or given back joins or leaves the next read."""
MEMORY_LIMIT = 20_000
"""Webhooks held in memory (read, not settled) above which the reader waits."""
ORPHAN_IDLE = 30.0
ORPHAN_EVERY = 10.0
PRUNE_IDLE = 300.0
RESTART_DELAY = 1.0


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        sender: Sender,
        policy: RetryPolicy,
        *,
        lease: float = 15.0,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.sender = sender
        self.policy = policy
        self.lease = lease
        self.rng = rng or random.Random()  # jitter and spread, nothing secret
        self.owned: dict[int, Partition] = {}
        self._releasing: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._leases: asyncio.Task[None] | None = None
        self._readers: dict[int | None, asyncio.Task[None]] = {}
        self._reads: dict[int | None, tuple[frozenset[int], asyncio.Event]] = {}
        """Each reader's read in flight: the partitions it covers, and set when it returns."""
        self._stopping = False
        self._last_orphan_claim = 0.0
        self._warned_at = 0.0

    # -- the lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._leases = asyncio.ensure_future(self._keep_leases())

    async def stop(self, grace: float) -> None:
        """Stops reading, lets deliveries in flight finish for up to ``grace`` seconds, gives every
        lease back (what was not delivered goes to the next holder at once) and leaves."""
        self._stopping = True
        if self._leases is not None:
            self._leases.cancel()
            await asyncio.gather(self._leases, return_exceptions=True)
        # The reads in flight return (within READ_BLOCK): what they bring is dispatched, or stays in
        # this consumer's pending entries, which the next holder of each lease claims. Cancelled
        # instead, a read could still hand entries to this consumer after its leases are given back.
        readers = list(self._readers.values())
        _, late = await asyncio.wait(readers, timeout=READ_BLOCK + 1) if readers else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self._readers.clear()
        await asyncio.gather(*(self._give_back(n, grace) for n in list(self.owned)), return_exceptions=True)
        for task in self._tasks:  # a partition still being taken, or given back
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(errors.SyncError):
            await self.outbox.leave()
        await self.sender.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- leases ------------------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except errors.SyncError as exc:
                if time.monotonic() - self._warned_at > 30:  # Redis down: once per 30 s, not every tick
                    self._warned_at = time.monotonic()
                    log.warning("webhook delivery cannot reach Redis: %s", exc.message)
            except Exception:
                log.exception("webhook delivery: lease keeping failed")
            await asyncio.sleep(self.lease / 3)

    async def _tick(self) -> None:
        # As long as a lease: a dead process stops counting when its leases lapse, so the others'
        # share grows to cover its partitions at the same moment.
        members = await self.outbox.join(self.lease)
        share = -(-PARTITIONS // max(members, 1))
        # Those being given back too: their requests in flight must finish before another process
        # may deliver the partition.
        held = list(self.owned)
        renewed = await asyncio.gather(
            *(self.outbox.hold(n, self.lease) for n in held), return_exceptions=True
        )
        for number, answer in zip(held, renewed, strict=True):
            if answer == 0:
                log.warning("webhook partition %d: lease lost to another process", number)
                self._drop(number)
        held = [n for n in self.owned if n not in self._releasing]
        if len(held) > share:
            for number in sorted(held)[share:]:
                self._releasing.add(number)
                self._spawn(self._give_back(number, self.sender.timeout + 1))
        elif len(held) < share:
            await self._take(share - len(held))
        await self._upkeep()

    async def _take(self, wanted: int) -> None:
        free = [n for n in range(PARTITIONS) if n not in self.owned]
        self.rng.shuffle(free)
        while wanted > 0 and free:
            batch, free = free[:wanted], free[wanted:]
            answers = await asyncio.gather(*(self.outbox.hold(n, self.lease) for n in batch))
            for number, answer in zip(batch, answers, strict=True):
                if answer:
                    wanted -= 1
                    self._begin(number)

    def _begin(self, number: int, delay: float = 0.0) -> None:
        partition = Partition(number, self.outbox, self.sender, self.policy, self._failed, self.rng)
        self.owned[number] = partition
        self._spawn(self._start(partition, delay))

    async def _start(self, partition: Partition, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            await partition.start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed(partition, exc)
            return
        if self.owned.get(partition.number) is partition and not partition.closing:
            self._read(partition.number)

    def _failed(self, partition: Partition, exc: BaseException) -> None:
        """A partition's work failed: stop it, and start it afresh from Redis (if still held)."""
        if self.owned.get(partition.number) is not partition or self._stopping:
            return
        partition.abort()
        if isinstance(exc, LeaseLost):
            log.warning("webhook partition %d: lease lost to another process", partition.number)
            del self.owned[partition.number]
            return
        # Redis down fails every partition, every second (and a bug may too): one line per 30 s says it.
        if time.monotonic() - self._warned_at > 30:
            self._warned_at = time.monotonic()
            if isinstance(exc, errors.SyncError):
                log.warning("webhook partition %d: %s; starting it again", partition.number, exc.message)
            else:
                log.error("webhook partition %d failed; starting it again", partition.number, exc_info=exc)
        self._begin(partition.number, RESTART_DELAY)

    def _drop(self, number: int) -> None:
        partition = self.owned.pop(number, None)
        if partition is not None:
            partition.abort()

    async def _give_back(self, number: int, grace: float) -> None:
        partition = self.owned.get(number)
        try:
            if partition is not None:
                await partition.close(grace)
            # A read that covered the partition and is still on its way would hand its new entries
            # to this process after the next holder has claimed what was pending: wait it out.
            for covered, returned in list(self._reads.values()):
                if number in covered:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(returned.wait(), READ_BLOCK + 1)
            with contextlib.suppress(errors.SyncError):
                await self.outbox.release(number)
        finally:
            if self.owned.get(number) is partition:
                del self.owned[number]
            self._releasing.discard(number)

    async def _upkeep(self) -> None:
        """Trims delivered entries, claims orphans now and then, measures the backlog."""
        ready = [p for p in self.owned.values() if p.ready]
        trims = []
        for partition in ready:
            if partition.settled and partition.last_read is not None:
                partition.settled = False
                trims.append(self.outbox.trim(partition.number, _next_id(partition.last_read)))
        await asyncio.gather(*trims)
        if time.monotonic() - self._last_orphan_claim > ORPHAN_EVERY:
            self._last_orphan_claim = time.monotonic()
            for partition in ready:
                claimed = await self.outbox.claim(partition.number, ORPHAN_IDLE, frozenset(partition.held))
                partition.dropped(claimed.trimmed)
                for entry in claimed.entries:
                    partition.dispatch(entry)
        waiting = await asyncio.gather(*(self.outbox.waiting(p.number) for p in ready))
        metrics.WEBHOOK_BACKLOG.set(sum(waiting))
        await self.sender.prune(PRUNE_IDLE)

    # -- reading -----------------------------------------------------------------------------------

    def _read(self, number: int) -> None:
        """Makes sure a reader covers the partition: the one reader of every partition where a read
        may span partitions, else one of its own."""
        key = None if self.outbox.multi_key_reads else number
        reader = self._readers.get(key)
        if reader is None or reader.done():
            self._readers[key] = asyncio.ensure_future(self._reader(key))

    async def _reader(self, only: int | None) -> None:
        while not self._stopping:
            partitions = self._readable(only)
            if not partitions:
                if only is not None:
                    return
                await asyncio.sleep(0.1)
                continue
            # Rare and brief (see the module docstring): a poll costs less than an event per settle.
            while sum(len(p.held) for p in self.owned.values()) > MEMORY_LIMIT:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            returned = asyncio.Event()
            self._reads[only] = (frozenset(partitions), returned)
            try:
                entries = await self.outbox.read(partitions, READ_COUNT, READ_BLOCK)
            except errors.SyncError as exc:
                # What the broken read returned is lost here but not in Redis: starting the
                # partitions afresh claims it back.
                for number in partitions:
                    if number in self.owned:
                        self._failed(self.owned[number], exc)
                await asyncio.sleep(RESTART_DELAY)
                continue
            finally:
                returned.set()
            for entry in entries:
                partition = self.owned.get(entry.partition)
                if partition is not None and partition.ready:
                    partition.last_read = entry.id
                    partition.dispatch(entry)
                # else: given back meanwhile; the entry stays in the stream for the next holder.

    def _readable(self, only: int | None) -> list[int]:
        numbers = list(self.owned) if only is None else [only]
        found = []
        for number in numbers:
            partition = self.owned.get(number)
            if partition is not None and partition.ready and number not in self._releasing:
                found.append(number)
        return found


def _next_id(entry_id: str) -> str:
    milliseconds, _, sequence = entry_id.partition("-")
    return f"{milliseconds}-{int(sequence) + 1}"
