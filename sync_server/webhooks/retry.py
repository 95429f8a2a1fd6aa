"""When a failed webhook is tried again, and for how long."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap, for a bounded time.

    The wait after the n-th failed attempt is drawn from the upper half of ``first_wait * 2**(n-1)``,
    capped at ``max_wait``: never longer than the cap, so a receiver that comes back gets its backlog
    within about ``max_wait``; jittered, so the partitions of a service do not retry in lockstep. A
    webhook is retried until ``retry_for`` seconds after it was written, then it is a dead letter.
    """

    first_wait: float = 1.0
    max_wait: float = 30.0
    retry_for: float = 3600.0

    def wait(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait after ``attempts`` (>= 1) failed attempts."""
        ceiling = min(self.max_wait, self.first_wait * 2.0 ** min(attempts - 1, 40))
        return ceiling / 2 + rng.random() * ceiling / 2

    def gave_up(self, written_at: float, now: float) -> bool:
        """Whether a webhook written at ``written_at`` (Unix time) is past its retries at ``now``."""
        return now - written_at >= self.retry_for
