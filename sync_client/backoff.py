"""Jittered exponential backoff: how long to wait before the next attempt (a reconnect, a resubscribe
the server refused for now, a conflicting mutate). The one implementation in the client."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of ``initial * multiplier**attempt`` capped at ``maximum``, with "equal jitter".

    Each delay is drawn from ``[d/2, d]``: half of it is random so that clients dropped together (a
    server restart) do not come back together, and half is kept so no client retries at once in a loop.
    ``slow_factor`` stretches the delays after a close that asks for a long backoff (4429, unknown codes).
    """

    initial: float = 0.25
    maximum: float = 15.0
    multiplier: float = 2.0
    slow_factor: float = 8.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1 or self.slow_factor < 1:
            raise ValueError("need 0 < initial <= maximum, multiplier >= 1 and slow_factor >= 1")

    def delay(self, attempt: int, *, slow: bool = False, rng: random.Random | None = None) -> float:
        """The delay before retry number ``attempt`` (0 for the first retry)."""
        stretch = self.slow_factor if slow else 1.0
        # Capping the exponent keeps the float finite however long a client keeps retrying.
        ceiling = min(self.maximum * stretch, self.initial * stretch * self.multiplier ** min(attempt, 64))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
