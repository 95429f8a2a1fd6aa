"""Prometheus metrics: every figure the server counts, and the ``/metrics`` endpoint.

Names follow Prometheus conventions (``sync_…_total`` counters, ``_seconds`` histograms). The metric
objects live here, at module level, so that the hooks in the other modules are one call each.

Hot paths pay one ``inc()`` per fact, never a label lookup: children for every label value known in
advance are bound once, at import (:data:`WRITES`, :data:`CONNECTIONS_OPEN`…). Fan-out does not even
pay one ``inc()`` per delivery: a session adds one to a plain integer (:class:`DeliveryTally`) and the
hub flushes the tallies once per event (:func:`flush_deliveries`), one ``inc(n)`` per protocol for the
n subscribers it reached.

Several workers (``--workers`` > 1): the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of its
own for the run, before the workers start; prometheus-client then keeps each process's values in files
there, and a scrape of any worker merges them all (:func:`exposition`). Gauges say how (``livesum``:
the sum over the processes alive; a worker that stops marks itself dead, see :func:`process_exit`).

``SYNC_METRICS=off`` (read once, at import) replaces every metric with a no-op and removes
``/metrics``: the same build without counting, for comparing the cost (``bench``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Final, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from sync_server import errors

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def enabled_in(env: dict[str, str] | os._Environ[str]) -> bool:
    """``SYNC_METRICS``: on unless ``off`` (or ``0``, ``false``, ``no``)."""
    return env.get("SYNC_METRICS", "on").strip().lower() not in ("off", "0", "false", "no")


ENABLED: Final = enabled_in(os.environ)
MULTIPROCESS: Final = bool(os.environ.get(MULTIPROC_ENV))


class Value(Protocol):
    """What the hooks call: a labelled child of a counter, gauge or histogram (or a no-op)."""

    def inc(self, amount: float = 1) -> None: ...


class Level(Value, Protocol):
    def dec(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...


class Timing(Protocol):
    def observe(self, amount: float) -> None: ...


class _Off:
    """Every metric when ``SYNC_METRICS=off``: each call does nothing."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_OFF = _Off()


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter | _Off:
    return Counter(name, doc, list(labels)) if ENABLED else _OFF


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge | _Off:
    # livesum: across workers, the sum over the processes alive (a stopped worker no longer counts).
    return Gauge(name, doc, list(labels), multiprocess_mode="livesum") if ENABLED else _OFF


def _histogram(
    name: str, doc: str, labels: Iterable[str] = (), buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS
) -> Histogram | _Off:
    return Histogram(name, doc, list(labels), buckets=buckets) if ENABLED else _OFF


# -- the process ------------------------------------------------------------------------------------

WORKER_STARTED: Final[Level] = (
    # "all": one sample per worker, labelled with its pid (one scrape shows every worker it merged).
    Gauge("sync_worker_start_time_seconds", "Unix time the worker started", multiprocess_mode="all")
    if ENABLED
    else _OFF
)
WORKER_STARTED.set(time.time())

# -- HTTP (REST and the other plain HTTP routes) ------------------------------------------------------

UNMATCHED = "unmatched"
"""The route label of a request that matched no route (a 404, or refused before routing)."""
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

HTTP_REQUESTS = _counter(
    "sync_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ("route", "method", "status"),
)
HTTP_DURATION = _histogram(
    "sync_http_request_duration_seconds",
    "Seconds from a request's arrival to its answer having been sent, by route template and method",
    ("route", "method"),
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_http_children: dict[tuple[str, str, int], tuple[Value, Timing]] = {}


def count_request(method: str, route: str | None, status: int | None, started: float) -> None:
    """One answered HTTP request (``status`` None: the client left before the answer, not counted)."""
    if status is None or not ENABLED:
        return
    key = (route or UNMATCHED, method if method in _METHODS else "other", status)
    children = _http_children.get(key)
    if children is None:
        # A few dozen combinations at most (templates x methods x statuses): bound once each.
        children = _http_children[key] = (
            HTTP_REQUESTS.labels(key[0], key[1], str(status)),
            HTTP_DURATION.labels(key[0], key[1]),
        )
    children[0].inc()
    children[1].observe(time.perf_counter() - started)


# -- document writes (counted in the document service, for every adapter) -----------------------------

WRITE_KINDS: Final = ("create", "set", "update", "set_ttl", "remove")
"""``set`` replaces the data (REST's update with ``Data``, the socket ``set``), ``update`` merges it
(the socket ``update``), ``set_ttl`` changes only the expiry."""
WRITE_RESULTS: Final = ("ok", "precondition_failed", "not_found", "forbidden", "error")

_WRITES = _counter(
    "sync_document_writes_total",
    "Document writes through any adapter, by kind and result "
    "(precondition_failed: If-Match did not match, 412; not_found: 404; forbidden: refused by access "
    "control; error: anything else)",
    ("kind", "result"),
)
WRITES: Final[dict[str, dict[str, Value]]] = {
    kind: {result: _WRITES.labels(kind, result) for result in WRITE_RESULTS} for kind in WRITE_KINDS
}


def write_failed(kind: str, exc: BaseException) -> None:
    """Counts a failed write by what ``exc`` says (a cancellation is no result, and not counted)."""
    if not isinstance(exc, Exception):
        return
    if isinstance(exc, errors.RevisionMismatch):
        result = "precondition_failed"
    elif isinstance(exc, errors.NotFoundError):
        result = "not_found"
    elif isinstance(exc, errors.ForbiddenError):
        result = "forbidden"
    else:
        result = "error"
    WRITES[kind][result].inc()


# -- websockets ----------------------------------------------------------------------------------------

PROTOCOLS: Final = ("native", "twilsock")

_CONNECTIONS = _gauge(
    "sync_ws_connections_open", "Websocket connections open, by protocol (native or twilsock)", ("protocol",)
)
CONNECTIONS_OPEN: Final[dict[str, Level]] = {p: _CONNECTIONS.labels(p) for p in PROTOCOLS}
SUBSCRIPTIONS_OPEN: Final[Level] = _gauge(
    "sync_subscriptions_open", "Document subscriptions open, over every websocket connection"
)
HUB_CHANNELS: Final[Level] = _gauge(
    "sync_hub_channels", "Redis pub/sub channels subscribed (one per document with local subscribers)"
)
_DELIVERIES = _counter(
    "sync_events_delivered_total",
    "Document events written to websocket clients (one per event per subscriber), by protocol",
    ("protocol",),
)
SLOW_CLOSES: Final[Value] = _counter(
    "sync_ws_slow_closes_total",
    "Websocket connections closed with 4508: too much waiting to be sent, or events lost (hub reset)",
)
_TOKEN_REFUSALS = _counter(
    "sync_token_refusals_total",
    "Access tokens refused (at connect or renewal), by Twilio error code",
    ("code",),
)


class DeliveryTally:
    """The deliveries of one protocol since the last flush: a plain integer, added to per delivery."""

    __slots__ = ("_counter", "count")

    def __init__(self, counter: Value) -> None:
        self.count = 0
        self._counter = counter


TALLIES: Final[dict[str, DeliveryTally]] = {p: DeliveryTally(_DELIVERIES.labels(p)) for p in PROTOCOLS}


def tally(protocol: str) -> DeliveryTally:
    """The delivery tally of ``protocol`` (bound once per connection, not per delivery)."""
    found = TALLIES.get(protocol)
    if found is None:
        found = TALLIES[protocol] = DeliveryTally(_DELIVERIES.labels(protocol))
    return found


def connections_open(protocol: str) -> Level:
    found = CONNECTIONS_OPEN.get(protocol)
    if found is None:
        found = CONNECTIONS_OPEN[protocol] = _CONNECTIONS.labels(protocol)
    return found


def flush_deliveries() -> None:
    """Adds the tallied deliveries to the counter: once per event dispatched (one ``inc(n)`` per
    protocol), not once per subscriber."""
    for tally in TALLIES.values():
        if tally.count:
            tally._counter.inc(tally.count)
            tally.count = 0


def token_refused(code: int) -> None:
    _TOKEN_REFUSALS.labels(str(code)).inc()


# -- Redis and the hub ---------------------------------------------------------------------------------

_REDIS_ERRORS = _counter(
    "sync_redis_errors_total",
    "Store commands that failed for Redis's state, by kind (unavailable: unreachable or refusing; "
    "full: out of memory; timeout: no answer in time)",
    ("kind",),
)
REDIS_ERRORS: Final[dict[str, Value]] = {
    kind: _REDIS_ERRORS.labels(kind) for kind in ("unavailable", "full", "timeout")
}
_HUB_CONNECTS = _counter(
    "sync_hub_connects_total",
    "Redis pub/sub connections made by the hub (the first, then each reconnect), by node",
    ("node",),
)
_HUB_RESETS = _counter(
    "sync_hub_resets_total",
    "Times events may have been lost on a node (its pub/sub connection lost, or Redis ending channels' "
    "sharded subscriptions): those channels were reset and their subscribers' connections closed",
    ("node",),
)


def hub_node(node: str) -> tuple[Value, Value]:
    """The connect and reset counters of one Redis node (``host:port``), bound once per node."""
    return _HUB_CONNECTS.labels(node), _HUB_RESETS.labels(node)


class NodeCounters:
    """What the store's connection to one Redis node counts (``host:port``), bound once per node."""

    __slots__ = ("connect_failures", "connects", "lost", "timeouts")

    def __init__(self, node: str) -> None:
        self.connects: Value = _STORE_CONNECTS.labels(node)
        self.connect_failures: Value = _STORE_CONNECTION_ERRORS.labels(node, "connect")
        self.lost: Value = _STORE_CONNECTION_ERRORS.labels(node, "lost")
        self.timeouts: Value = _STORE_CONNECTION_ERRORS.labels(node, "timeout")


_STORE_CONNECTS = _counter(
    "sync_redis_connects_total",
    "Connections the store's script connection made to a Redis node (the first, then each reconnect; "
    "one node on a single Redis, each master on a cluster), by node",
    ("node",),
)
_STORE_CONNECTION_ERRORS = _counter(
    "sync_redis_connection_errors_total",
    "Failures of the store's script connection to a Redis node, by node and kind (connect: no "
    "connection could be made; lost: an open connection dropped; timeout: a reply came too late, "
    "and the connection was dropped with it)",
    ("node", "kind"),
)
_node_counters: dict[str, NodeCounters] = {}


def store_node(node: str) -> NodeCounters:
    found = _node_counters.get(node)
    if found is None:
        found = _node_counters[node] = NodeCounters(node)
    return found


# -- expiry --------------------------------------------------------------------------------------------

SWEEP_DURATION: Final[Timing] = _histogram(
    "sync_expiry_sweep_duration_seconds",
    "Seconds one expiry sweep took; a removed event is late by at most the sweep interval plus this",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DOCUMENTS_EXPIRED: Final[Value] = _counter(
    "sync_documents_expired_total", "Documents removed by the expiry sweep"
)

# -- webhooks ------------------------------------------------------------------------------------------

WEBHOOK_OUTCOMES: Final = ("delivered", "failed", "dropped")
_WEBHOOK_DELIVERIES = _counter(
    "sync_webhook_deliveries_total",
    "Webhook attempts and losses, by outcome (delivered: a 2xx answer; failed: an attempt that got "
    "another answer, none in time, or no connection, to be retried; dropped: lost undelivered to the "
    "outbox's bound while no process delivered)",
    ("outcome",),
)
WEBHOOK_DELIVERIES: Final[dict[str, Value]] = {o: _WEBHOOK_DELIVERIES.labels(o) for o in WEBHOOK_OUTCOMES}
WEBHOOK_RETRIES: Final[Value] = _counter(
    "sync_webhook_retries_total", "Webhook attempts after the first one of the same webhook"
)
WEBHOOK_DEAD_LETTERS: Final[Value] = _counter(
    "sync_webhook_dead_letters_total", "Webhooks given up on after their retries (kept as dead letters)"
)
WEBHOOK_BACKLOG: Final[Level] = _gauge(
    "sync_webhook_backlog",
    "Webhooks written and not delivered yet (in the outbox or waiting for a retry), in the partitions "
    "this process delivers; summed over the processes, the whole backlog",
)
WEBHOOK_DURATION: Final[Timing] = _histogram(
    "sync_webhook_attempt_duration_seconds",
    "Seconds one webhook attempt took, from sending to the answer (or the failure)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)


# -- exposition ----------------------------------------------------------------------------------------


def exposition(accept: str) -> tuple[bytes, str]:
    """The scrape body and its content type: this process's metrics, or with several workers
    (multiprocess mode) those of every worker of this run, merged. The format is the one the
    scraper's ``Accept`` asks for (OpenMetrics, or Prometheus text 0.0.4 or 1.0.0; 0.0.4 by default)."""
    encode, content_type = choose_encoder(accept)
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return encode(registry), content_type
    return encode(REGISTRY), content_type


def process_exit() -> None:
    """A worker is stopping: its ``livesum`` gauges stop counting (its counters stay in the totals)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
