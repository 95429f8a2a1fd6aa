"""Delivering one partition's webhooks while this process holds its lease.

Within a partition (:class:`Partition`), each service has a :class:`Lane`, and within a lane each
document a *chain*: its webhooks one after another, in the order of the outbox, which is revision
order (one script at a time writes a partition). Chains of different documents run side by side,
as many at once as the receiver's slots allow (sender.py), so a slow receiver holds only its own
service's chains.

A lane is *healthy* or *backlogged*:

- healthy: a chain posts its head; delivered, the entry is acknowledged; failed, the lane turns
  backlogged and the entry moves to the service's backlog in Redis (``park``, atomic with the
  acknowledgement);
- backlogged: chains post nothing; each head moves to the backlog as it comes, so every document's
  webhooks stay in order there too. Once no chain of the lane has a request in flight, the *drain*
  takes over: the backlog's head is posted, retried with backoff (retry.py) until it is delivered,
  or moved to the dead letters once it is past the retry horizon while the receiver still fails;
  then the next head. When the backlog is empty, the lane is healthy again. A park that lands after
  that (it was on its way) makes the lane backlogged once more, and the chain behind it waits for
  its answer, so no later webhook of that document can overtake it.

A lane that holds more than :data:`LANE_LIMIT` webhooks in memory (a receiver that is slow but
answers) turns backlogged too, so memory stays bounded and the rest waits in Redis.

When the partition closes (shutdown, or the lease goes to another process), requests in flight may
finish; nothing new starts, and what was not settled stays in the stream, where the next holder of
the lease claims it. After any Redis error the deliverer starts the partition afresh from Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from sync_server import metrics
from sync_server.webhooks.events import (
    Dropped,
    Waiting,
    Webhook,
    decode_item,
    describe,
    encode_item,
    from_entry,
)
from sync_server.webhooks.outbox import Entry, Outbox
from sync_server.webhooks.retry import RetryPolicy
from sync_server.webhooks.sender import Outcome, Sender

log = logging.getLogger("sync_server.webhooks")

LANE_LIMIT = 1000
"""Webhooks of one service one partition holds in memory; beyond, they wait in the backlog."""


class LeaseLost(Exception):
    """Another process holds the partition's lease now: this one must stop delivering it."""


class Partition:
    def __init__(
        self,
        number: int,
        outbox: Outbox,
        sender: Sender,
        policy: RetryPolicy,
        on_failure: Callable[[Partition, BaseException], None],
        rng: random.Random,
    ) -> None:
        self.number = number
        self.outbox = outbox
        self.sender = sender
        self.policy = policy
        self.rng = rng
        self._on_failure = on_failure
        self.lanes: dict[str, Lane] = {}
        self.held: set[str] = set()
        """Ids of the entries in memory: dispatched, not settled yet."""
        self.ready = False
        """Started: new entries may be read for it."""
        self.closing = False
        self.last_read: str | None = None
        """The newest entry id a read of new entries returned (the trim's bound)."""
        self.settled = False
        """Something was settled since the last trim."""
        self.tasks: set[asyncio.Task[Any]] = set()
        self._acks: list[str] = []
        self._closed = asyncio.Event()

    async def start(self) -> None:
        """Takes up what Redis holds for the partition: the services' backlogs, then every entry read
        and not settled by whoever held the lease before (oldest first), before any new entry."""
        await self.outbox.prepare(self.number)
        for service_sid in await self.outbox.backlogged(self.number):
            lane = self.lane(service_sid)
            lane.mode = "backlogged"
            lane.maybe_drain()
        claimed = await self.outbox.claim(self.number, 0, frozenset())
        self.dropped(claimed.trimmed)
        for entry in claimed.entries:
            self.dispatch(entry)
        self.ready = True

    def lane(self, service_sid: str) -> Lane:
        found = self.lanes.get(service_sid)
        if found is None:
            found = self.lanes[service_sid] = Lane(self, service_sid)
        return found

    def dispatch(self, entry: Entry) -> None:
        try:
            decoded = from_entry(entry)
        except (KeyError, ValueError):
            log.error("webhook outbox entry %s of partition %d is malformed: skipped", entry.id, self.number)
            self.ack(entry.id)
            return
        if isinstance(decoded, Dropped):
            self.dropped(decoded.count)
            self.ack(entry.id)
            return
        if entry.id in self.held:  # already on its way (claimed while in memory): once is enough
            return
        self.held.add(entry.id)
        self.lane(decoded.service_sid).add(decoded)

    def dropped(self, count: int) -> None:
        if count:
            metrics.WEBHOOK_DELIVERIES["dropped"].inc(count)
            log.error(
                "%d webhooks of partition %d were dropped undelivered: the outbox reached its bound "
                "while no server process delivered them",
                count,
                self.number,
            )

    # -- settling --------------------------------------------------------------------------------

    def ack(self, entry_id: str) -> None:
        """Acknowledges a delivered entry; the acknowledgements of one loop iteration go together."""
        self.held.discard(entry_id)
        self.settled = True
        self._acks.append(entry_id)
        if len(self._acks) == 1:
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        if self._acks:
            ids, self._acks = self._acks, []
            self.spawn(self.outbox.ack(self.number, ids))

    def parked(self, entry_id: str) -> None:
        self.held.discard(entry_id)
        self.settled = True

    def record(self, webhook: Webhook, outcome: Outcome, attempt: int) -> None:
        """Counts and logs one attempt (never the signature, the auth token or the URL's secrets)."""
        metrics.WEBHOOK_DELIVERIES["delivered" if outcome.delivered else "failed"].inc()
        metrics.WEBHOOK_DURATION.observe(outcome.seconds)
        if attempt > 1:
            metrics.WEBHOOK_RETRIES.inc()
        what = (webhook.event_type, webhook.document_sid, webhook.service_sid, webhook.token)
        if outcome.delivered:
            log.log(
                logging.INFO if attempt > 1 else logging.DEBUG,
                "webhook %s of %s (service %s, token %s) delivered to %s: HTTP %s in %.0f ms, attempt %d",
                *what,
                describe(webhook.url),
                outcome.status,
                outcome.seconds * 1000,
                attempt,
            )
        else:
            log.warning(
                "webhook %s of %s (service %s, token %s) to %s failed: %s (attempt %d); it will be retried",
                *what,
                describe(webhook.url),
                outcome.error,
                attempt,
            )

    # -- tasks -----------------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self.closing:
            self._on_failure(self, exc)

    async def pause(self, seconds: float) -> None:
        """Sleeps ``seconds``, or less if the partition closes meanwhile."""
        if seconds > 0 and not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), seconds)

    async def close(self, grace: float) -> None:
        """Stops starting anything; lets requests in flight finish for up to ``grace`` seconds, then
        cancels the rest. What is not settled stays in the stream for the next holder of the lease."""
        self.closing = True
        self.ready = False
        self._closed.set()
        deadline = time.monotonic() + grace
        while self.tasks:
            self._flush_acks()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait(set(self.tasks), timeout=remaining)
        self.abort()
        if self._acks:  # settled during the last moments: worth one more round trip
            ids, self._acks = self._acks, []
            await self.outbox.ack(self.number, ids)

    def abort(self) -> None:
        """Cancels everything at once (the lease is lost, or Redis failed)."""
        self.closing = True
        self.ready = False
        self._closed.set()
        for task in list(self.tasks):
            task.cancel()


Mode = Literal["healthy", "backlogged"]


class Lane:
    """One service's webhooks in one partition (see the module docstring)."""

    def __init__(self, partition: Partition, service_sid: str) -> None:
        self.partition = partition
        self.service_sid = service_sid
        self.mode: Mode = "healthy"
        self.chains: dict[str, collections.deque[Webhook]] = {}
        self.queued = 0
        self.delivering = 0
        """Chains whose head is being posted (or waits for a slot to be)."""
        self.draining = False

    def add(self, webhook: Webhook) -> None:
        chain = self.chains.get(webhook.document_sid)
        if chain is None:
            chain = self.chains[webhook.document_sid] = collections.deque()
            self.partition.spawn(self._run_chain(webhook.document_sid, chain))
        chain.append(webhook)
        self.queued += 1
        if self.queued > LANE_LIMIT:
            self.mode = "backlogged"

    async def _run_chain(self, document_sid: str, chain: collections.deque[Webhook]) -> None:
        try:
            while chain and not self.partition.closing:
                if not await self._first_attempt(chain[0]):
                    break
                chain.popleft()
                self.queued -= 1
        finally:
            if self.chains.get(document_sid) is chain:
                del self.chains[document_sid]
                self.queued -= len(chain)
        self.maybe_drain()

    async def _first_attempt(self, webhook: Webhook) -> bool:
        """Posts a chain's head (healthy) or parks it (backlogged). Returns whether it is settled."""
        partition = self.partition
        if self.mode == "healthy":
            receiver = partition.sender.receiver(webhook.url)
            outcome: Outcome | None = None
            self.delivering += 1
            try:
                async with receiver.slot() as connection:
                    # Checked again: the lane may have turned while this chain waited for a slot.
                    if self.mode == "healthy" and not partition.closing:
                        outcome = await partition.sender.send(connection, webhook)
            finally:
                self.delivering -= 1
            if outcome is not None:
                partition.record(webhook, outcome, 1)
                if outcome.delivered:
                    partition.ack(webhook.entry_id)
                    return True
                self.mode = "backlogged"
                await self._park(webhook, 1, outcome.error)
                return True
            self.maybe_drain()
        if partition.closing:
            return False
        await self._park(webhook, 0, "")
        return True

    async def _park(self, webhook: Webhook, attempts: int, error: str) -> None:
        partition = self.partition
        item = encode_item(Waiting(webhook, attempts, error))
        length = await partition.outbox.park(partition.number, self.service_sid, webhook.entry_id, item)
        if length < 0:
            raise LeaseLost(partition.number)
        partition.parked(webhook.entry_id)
        # The drain may have emptied the backlog (and made the lane healthy) while this was on its way.
        self.mode = "backlogged"
        self.maybe_drain()

    def maybe_drain(self) -> None:
        """Starts the drain once the lane is backlogged and no chain of it has a request in flight."""
        idle = self.delivering == 0 and not self.draining and not self.partition.closing
        if self.mode == "backlogged" and idle:
            self.draining = True
            self.partition.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            await self._drain_backlog()
        finally:
            self.draining = False

    async def _drain_backlog(self) -> None:
        partition, outbox, policy = self.partition, self.partition.outbox, self.partition.policy
        failures = 0
        """Attempts that failed in a row, whichever heads they were for: the backoff's count."""
        last_error = ""
        head_attempts = 0
        current: bytes | None = None
        while not partition.closing:
            item = await outbox.head(partition.number, self.service_sid)
            if item is None:
                self.mode = "healthy"
                return
            if item != current:  # a new head: its attempts so far come with it
                current = item
                try:
                    waiting = decode_item(partition.number, item)
                except (KeyError, ValueError):
                    log.error("a backlog item of service %s is malformed: dead-lettered", self.service_sid)
                    await self._pop(item, item)
                    continue
                head_attempts = waiting.attempts
                failures = max(failures, waiting.attempts)
                last_error = last_error or waiting.error
            webhook = waiting.webhook
            if failures and policy.gave_up(webhook.written_at, time.time()):
                await self._give_up(item, waiting, head_attempts, last_error)
                continue
            if failures:
                await partition.pause(policy.wait(failures, partition.rng))
            receiver = partition.sender.receiver(webhook.url)
            async with receiver.slot() as connection:
                if partition.closing:
                    return
                outcome = await partition.sender.send(connection, webhook)
            head_attempts += 1
            partition.record(webhook, outcome, head_attempts)
            if outcome.delivered:
                failures, last_error = 0, ""
                if await self._pop(item, None) == 0:
                    self.mode = "healthy"
                    return
            else:
                failures += 1
                last_error = outcome.error

    async def _give_up(self, item: bytes, waiting: Waiting, attempts: int, error: str) -> None:
        webhook = waiting.webhook
        now = time.time()
        dead = encode_item(Waiting(webhook, attempts, error, dead_at=now))
        await self._pop(item, dead)
        metrics.WEBHOOK_DEAD_LETTERS.inc()
        log.error(
            "webhook %s of %s (service %s, token %s) to %s given up after %d attempts over %.0f s "
            "(last: %s): kept as a dead letter (see `sync-server webhooks dead-letters`)",
            webhook.event_type,
            webhook.document_sid,
            webhook.service_sid,
            webhook.token,
            describe(webhook.url),
            attempts,
            now - webhook.written_at,
            error or "not attempted",
        )

    async def _pop(self, item: bytes, dead: bytes | None) -> int:
        partition = self.partition
        left = await partition.outbox.pop(partition.number, self.service_sid, item, dead)
        if left == -1:
            raise LeaseLost(partition.number)
        return left
