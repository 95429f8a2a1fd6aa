"""Pings for every websocket connection of a process, from one timer.

Each connection is pinged every ``interval`` seconds; one that has not answered a ping within
``timeout`` seconds is told so (and closes with 1011). A timer per connection, as uvicorn keeps, costs
its handle and a ping payload per idle connection; here connections wait in buckets, one per tick of
``min(interval, timeout) / TICKS_PER_INTERVAL`` seconds, and one process-wide timer empties a bucket
per tick. A ping or a timeout comes at most one tick late, never early. Any pong counts as the
answer (RFC 6455 allows unsolicited pongs as heartbeats: a peer that sends one is alive).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from typing import Protocol

TICKS_PER_INTERVAL = 16
"""Buckets per interval: more spreads the pings of connections opened together over more ticks."""

log = logging.getLogger(__name__)


class Member(Protocol):
    keepalive_slot: int
    """The bucket holding the member, -1 when none (the keepalive's own bookkeeping)."""
    pong_due: bool
    """A ping was sent and no pong has arrived since (the keepalive's own bookkeeping)."""

    def ping(self, payload: bytes) -> None: ...

    def keepalive_timeout(self) -> None:
        """The pong did not come in time: the member closes (and calls :meth:`Keepalive.remove`)."""


class Keepalive:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float | None, timeout: float | None
    ) -> None:
        """``interval`` None or 0: no pings; ``timeout`` None: pings that are never waited for."""
        self._loop = loop
        self.enabled = interval is not None and interval > 0
        self._interval = interval or 0.0
        self._timeout = timeout if timeout is not None and timeout > 0 else None
        shortest = min(self._interval, self._timeout or self._interval)
        self._tick = shortest / TICKS_PER_INTERVAL if self.enabled else 1.0
        span = max(self._interval, self._timeout or 0.0)
        self._buckets: list[set[Member]] = [set() for _ in range(math.ceil(span / self._tick) + 2)]
        self._current = 0
        """The bucket the next tick empties, at :attr:`_next_at`."""
        self._next_at = 0.0
        self._members = 0
        self._ticks = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return self._members

    def add(self, member: Member) -> None:
        """Starts pinging ``member`` (the first ping after ``interval``)."""
        if not self.enabled:
            return
        member.pong_due = False
        self._place(member, self._interval)

    def answered(self, member: Member) -> None:
        """A pong from ``member``: its next ping is due ``interval`` from now."""
        if member.pong_due and member.keepalive_slot >= 0:
            self.remove(member)
            member.pong_due = False
            self._place(member, self._interval)

    def remove(self, member: Member) -> None:
        if member.keepalive_slot >= 0:
            self._buckets[member.keepalive_slot].discard(member)
            member.keepalive_slot = -1
            self._members -= 1

    def _place(self, member: Member, after: float) -> None:
        now = self._loop.time()
        if self._timer is None:
            self._next_at = now + self._tick
            self._timer = self._loop.call_at(self._next_at, self._run)
        # Bucket k after the current one is emptied at next_at + k * tick: the first not before
        # now + after.
        steps = max(0, math.ceil((now + after - self._next_at) / self._tick - 1e-9))
        # Only when the loop lags by more than a tick could it be further than the buckets reach.
        steps = min(steps, len(self._buckets) - 1)
        slot = (self._current + steps) % len(self._buckets)
        self._buckets[slot].add(member)
        member.keepalive_slot = slot
        self._members += 1

    def _run(self) -> None:
        due = self._buckets[self._current]
        self._buckets[self._current] = set()
        self._current = (self._current + 1) % len(self._buckets)
        self._next_at += self._tick
        self._ticks += 1
        payload = struct.pack("!I", self._ticks & 0xFFFFFFFF)
        self._members -= len(due)
        for member in due:
            member.keepalive_slot = -1
            try:
                self._visit(member, payload)
            except Exception:  # one broken connection must not stop everyone's pings
                log.exception("keepalive failed for a connection")
        if self._members:
            self._timer = self._loop.call_at(self._next_at, self._run)
        else:
            self._timer = None

    def _visit(self, member: Member, payload: bytes) -> None:
        if member.pong_due:
            member.pong_due = False
            member.keepalive_timeout()
            return
        member.ping(payload)
        if self._timeout is None:
            self._place(member, self._interval)
        else:
            member.pong_due = True
            self._place(member, self._timeout)
