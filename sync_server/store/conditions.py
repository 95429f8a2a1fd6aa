"""Redis replies that mean "the store cannot do this now", mapped to the error hierarchy.

Redis answers some commands with an error that is no bug of ours but a state of the server: out of
memory (``OOM``, ``maxmemory`` with ``noeviction``), a replica that refuses writes (``READONLY``),
a failed snapshot that stops writes (``MISCONF``), loading its data set (``LOADING``), a script
running too long (``BUSY``), a master or cluster that is down. Each becomes a client-visible
:class:`~sync_server.errors.SyncError` (507/20507 for a full store, 503/20503 for the others), is
logged as one warning per :data:`WARN_INTERVAL` per condition rather than a traceback per request,
and is remembered for a while so that ``/healthz`` can report it.

Any other error reply (a bug in a script, a wrong type) is not a condition: it stays an exception
and is logged with its traceback where it surfaces.

Atomicity under OOM: our scripts carry no shebang flags, so Redis runs them in its compatibility
mode and refuses the first memory-growing write (``HSET``, ``ZADD``...) of a script that has written
nothing yet. Every script that may grow memory writes with such a command first, so a refused
script has changed nothing and published nothing. Scripts that start by deleting (document and
service deletes, the expiry sweep) still run, which is what frees memory.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server import errors, metrics

log = logging.getLogger("sync_server.store")

WARN_INTERVAL = 30.0
"""Seconds between two warnings about the same condition (per process)."""
HEALTH_WINDOW = 10.0
"""Seconds a condition seen in a reply keeps ``/healthz`` degraded, unless a check clears it sooner."""


@dataclass(frozen=True, slots=True)
class Condition:
    word: str
    """The error code Redis starts its reply with."""
    detail: str
    """What ``/healthz`` and the log say."""
    error: Callable[[str], errors.SyncError]
    blocks_reads: bool = False
    """Redis answers nothing but this error while it lasts, so any successful reply ends it."""


def _unavailable(message: str) -> errors.SyncError:
    return errors.UnavailableError(message)


CONDITIONS: dict[str, Condition] = {
    condition.word: condition
    for condition in (
        Condition("OOM", "Redis is out of memory (maxmemory reached)", errors.StoreFull),
        Condition("MISCONF", "Redis refuses writes: it cannot persist to disk (MISCONF)", _unavailable),
        Condition("READONLY", "Redis is a read-only replica", _unavailable),
        Condition("LOADING", "Redis is loading its data set", _unavailable, blocks_reads=True),
        Condition("BUSY", "Redis is busy running a script", _unavailable, blocks_reads=True),
        Condition("MASTERDOWN", "Redis has lost its master", _unavailable, blocks_reads=True),
        Condition("CLUSTERDOWN", "the Redis cluster is down", _unavailable, blocks_reads=True),
        Condition("TRYAGAIN", "the Redis cluster is moving keys", _unavailable, blocks_reads=True),
        Condition("NOREPLICAS", "Redis has too few replicas to accept writes", _unavailable),
    )
}

CLIENT_MESSAGES = {
    "OOM": "The data store is full: writes are refused until memory is freed",
}
DEFAULT_CLIENT_MESSAGE = "The data store cannot accept this now, try again"

# redis-py turns some error codes into classes and strips the code from the message.
_BY_CLASS: tuple[tuple[type[RedisError], str], ...] = (
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (BusyLoadingError, "LOADING"),
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (TryAgainError, "TRYAGAIN"),
)
# Redis before 7 wraps an error raised inside a script: "ERR Error running script ... -OOM command ...".
_EMBEDDED = re.compile(r"(?:^|\s-)(" + "|".join(CONDITIONS) + r")\b")


def condition_of(exc: RedisError) -> Condition | None:
    """The condition an error reply reports, or None for any other error."""
    code = getattr(exc, "status_code", None)  # redis-py 6+: the code it stripped
    if isinstance(code, str) and code in CONDITIONS:
        return CONDITIONS[code]
    for cls, word in _BY_CLASS:
        if isinstance(exc, cls):
            return CONDITIONS[word]
    message = str(exc)
    word = message.split(" ", 1)[0]
    if word in CONDITIONS:
        return CONDITIONS[word]
    match = _EMBEDDED.search(message[:512])
    return CONDITIONS[match.group(1)] if match else None


class ConditionLog:
    """What the store has seen: when each condition was last replied, and when it was last logged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._throttle = WarningThrottle(clock)

    def seen(self, condition: Condition) -> errors.SyncError:
        """Records one reply with ``condition``, warns (throttled), returns the error for the client."""
        self._seen[condition.word] = self._clock()
        metrics.REDIS_ERRORS["full" if condition.word == "OOM" else "unavailable"].inc()
        self._throttle.warn(
            condition.word, "%s: answering %s", condition.detail, _answer(condition), exc_info=False
        )
        return condition.error(CLIENT_MESSAGES.get(condition.word, DEFAULT_CLIENT_MESSAGE))

    def recent(self, within: float = HEALTH_WINDOW) -> list[Condition]:
        """The conditions replied within the last ``within`` seconds, most recent first."""
        now = self._clock()
        words = sorted(self._seen, key=self._seen.__getitem__, reverse=True)
        return [CONDITIONS[w] for w in words if now - self._seen[w] <= within]

    def clear(self, word: str) -> None:
        """Forgets a condition that a direct check has shown to be over."""
        self._seen.pop(word, None)

    @property
    def active(self) -> bool:
        return bool(self._seen)

    def answered(self, *, wrote: bool = False) -> None:
        """Redis has just answered a command: the conditions that block every command are over,
        and when it stored something (``wrote``), all of them are."""
        for word in [w for w in self._seen if wrote or CONDITIONS[w].blocks_reads]:
            del self._seen[word]


def unreachable(exc: BaseException) -> errors.UnavailableError:
    """The client error for a Redis that did not answer (``timeout``) or cannot be reached, counted."""
    timed_out = isinstance(exc, RedisTimeoutError | TimeoutError)
    metrics.REDIS_ERRORS["timeout" if timed_out else "unavailable"].inc()
    return errors.UnavailableError("The data store is unavailable, try again")


def _answer(condition: Condition) -> str:
    error = condition.error("")
    return f"{error.status}/{error.code}"


class WarningThrottle:
    """At most one log line per key per :data:`WARN_INTERVAL`; the next line counts what it skipped.

    For failures that repeat on every request or every sweep: a full Redis must not turn the log
    into one traceback per write.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval: float = WARN_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: object, exc_info: bool) -> bool:
        """Logs ``message % args`` as a warning unless ``key`` was logged within the interval."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        suffix = f" ({skipped} more since the last warning)" if skipped else ""
        suffix += f"; the next {self._interval:g} s of repeats are not logged"
        log.warning(message + suffix, *args, exc_info=exc_info)
        return True
