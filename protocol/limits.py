"""Pure limits: the command rate limiter and the size bounds of command fields.

The limiter keeps no clock: the caller passes ``now`` (``time.monotonic()`` in the server, anything in
tests). A gateway typically runs two per connection: one at the configured rate whose refusals become
``54009`` error replies, and a looser one (say twice the rate and burst) whose refusals close the
connection with ``4429``, "far over the limit".
"""

from __future__ import annotations

__all__ = ["MAX_ID_LENGTH", "RateLimiter"]

MAX_ID_LENGTH = 64
"""Longest string a command ``id`` may be (it is echoed back, so it must stay small)."""

_EPSILON = 1e-9


class RateLimiter:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``; it starts full.

    ``allow(now)`` spends ``cost`` tokens and returns ``True`` if there were enough, else spends nothing
    and returns ``False``. A ``now`` earlier than the previous one (a clock that stepped back) counts as
    no time elapsed, so the bucket never gains tokens from it.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def allow(self, now: float, cost: float = 1.0) -> bool:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        # The epsilon absorbs float rounding in ``(now - last) * rate`` (clock values near 1e5..1e9 keep
        # few fractional digits), which would otherwise refuse a request that arrives exactly on time.
        if self._tokens + _EPSILON < cost:
            return False
        self._tokens = max(0.0, self._tokens - cost)
        return True
