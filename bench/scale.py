"""Cost that stays flat as data grows (issue 13, goal 5), on its own Redis and one server.

Two services side by side, ``small`` (1,000 documents) and ``big`` (100,000), 1 KiB each:

- *writes/s*: wrk (``wrk/write.lua``, 64 connections) updating the service's documents in rotation,
  in rounds that alternate small, big, small, big (so the box's drift falls on both alike);
- *latency* on one keep-alive connection, one request at a time, small and big requests alternating:
  fetching a document by name (random names over the whole service), the first page of
  ``GET Documents?PageSize=50``, a deep page: the one reached by following ``next_page_url``
  from the first page to the middle of the service (that walk also checks that no document repeats),
  and the pages along a walk by ``next_page_url`` (each page new to the big service's walk);
- *expiry burst*: ``expiry_documents`` documents of a third service created by the fleet, all due
  in the same second, ``expiry_sample`` of them subscribed: every sampled ``removed`` must arrive
  within 1 s of the due time, and 1 s after it the rest must be gone from the service's listing
  index in Redis (the sweep removes an entry and publishes its ``removed`` in one script) and a
  sample of them must answer 404 over REST.

The documents are created in this process by the server's own ``DocumentService.create`` over a
``RedisStore`` (many concurrent calls on the store's pipelined connection), not over HTTP: a REST
create decodes the form and makes exactly this call, so Redis ends up holding the same keys (one
``doc_create`` script per document, same KEYS and ARGV); only the HTTP decoding is skipped, which
makes 100,000 documents a matter of seconds instead of a minute.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from bench import procs
from bench.fleet_process import BenchError, Fleet
from bench.rest import RestPlan, document_data, load, write_body
from sync_server.documents import DocumentService, JsonText
from sync_server.embedded import RedisProcess
from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore
from sync_server.store.scripts import load_scripts

PAGE_SIZE = 50


@dataclass(frozen=True)
class ScalePlan:
    small: int = 1000
    big: int = 100_000
    write_seconds: float = 3
    rounds: int = 3
    fetches: int = 2000  # per service
    pages: int = 300  # per service and kind of page
    expiry_documents: int = 10_000
    expiry_sample: int = 1000
    expiry_due_s: int = 12


class Connection:
    """One keep-alive HTTP/1.1 connection sending one GET at a time: latency without queueing, and
    little client work per request (http.client would add its own parsing to every figure)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = f"{procs.ACCOUNT_SID}:{procs.AUTH_TOKEN}".encode()
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Basic {base64.b64encode(raw).decode()}\r\n\r\n"
        self.buffer = b""

    def get(self, path: str) -> tuple[int, bytes, float]:
        """Status, body and seconds from sending the request to the body's last byte."""
        started = time.perf_counter()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = next(
            (int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"),
            None,
        )
        if length is None:
            raise BenchError(f"GET {path}: a response without Content-Length")
        while len(self.buffer) < length:
            self._recv()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(head[9:12]), body, time.perf_counter() - started

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise BenchError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


async def _create(redis_url: str, service_sid: str, prefix: str, count: int, lanes: int = 128) -> None:
    store = RedisStore(Redis.from_url(redis_url), procs.ACCOUNT_SID)
    documents = DocumentService(store)
    who = Principal.system(service_sid)
    data = JsonText(document_data().decode())
    numbers = iter(range(count))

    async def lane() -> None:
        for n in numbers:  # one iterator shared by the lanes: each number is taken once
            await documents.create(who, unique_name=f"{prefix}{n:012d}", data=data, ttl=None)

    try:
        await asyncio.gather(*(lane() for _ in range(lanes)))
    finally:
        await store.close()


def create_documents(redis_url: str, service_sid: str, prefix: str, count: int) -> float:
    """Creates ``count`` documents PREFIX + 12 digits; returns the seconds it took."""
    started = time.monotonic()
    asyncio.run(_create(redis_url, service_sid, prefix, count))
    return time.monotonic() - started


def _documents(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    page = json.loads(body)
    next_url = page["meta"]["next_page_url"]
    return page["documents"], None if next_url is None else _path(next_url)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def walk_to_middle(conn: Connection, service_sid: str, count: int) -> dict[str, Any]:
    """Follows ``next_page_url`` from the first page until half the documents are behind; returns the
    next page's path and the walk's figures. A document seen twice, or a page over PageSize, is an error."""
    path: str | None = f"/v1/Services/{service_sid}/Documents?PageSize={PAGE_SIZE}"
    seen: set[str] = set()
    pages, seconds = 0, 0.0
    while len(seen) < count // 2:
        if path is None:
            raise BenchError(f"listing {service_sid}: the pages ended after {len(seen)} of {count} documents")
        status, body, took = conn.get(path)
        if status != 200:
            raise BenchError(f"listing {service_sid}: HTTP {status} on page {pages}")
        found, path = _documents(body)
        sids = {doc["sid"] for doc in found}
        if len(found) > PAGE_SIZE or len(sids) < len(found) or sids & seen:
            raise BenchError(f"listing {service_sid}: page {pages} repeats documents or is too long")
        seen |= sids
        pages += 1
        seconds += took
    if path is None:
        raise BenchError(f"listing {service_sid}: no page after the middle")
    return {"deep_path": path, "pages_walked": pages, "walk_ms_per_page": round(seconds * 1000 / pages, 3)}


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "mean_ms": round(
        sum(ordered) * 1000 / len(ordered), 3)}  # fmt: skip


def interleaved(
    conn: Connection, paths: dict[str, list[str]], requests: int, check: str
) -> dict[str, dict[str, float]]:
    """``requests`` GETs per label, the labels taking turns (in alternating order); every answer must
    be 200 and hold ``check``. The first tenth is a warm-up and not counted."""
    labels = list(paths)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    warmup = max(1, requests // 10)
    for i in range(warmup + requests):
        for label in labels if i % 2 else reversed(labels):
            path = paths[label][i % len(paths[label])]
            status, body, took = conn.get(path)
            if status != 200 or check.encode() not in body:
                raise BenchError(f"GET {path}: HTTP {status} {body[:200]!r}")
            if i >= warmup:
                samples[label].append(took)
    return {label: _stats(values) for label, values in samples.items()}


def interleaved_walk(conn: Connection, first: dict[str, str], requests: int) -> dict[str, dict[str, float]]:
    """``requests`` pages per label along a walk by ``next_page_url`` from the first page (a walk that
    ends starts again: the small service's 20 pages come round again and again, while the big one's
    walk meets documents it has not read before), the labels taking turns. The first tenth is a
    warm-up and not counted."""
    at = dict(first)
    samples: dict[str, list[float]] = {label: [] for label in first}
    warmup = max(1, requests // 10)
    for i in range(warmup + requests):
        for label in list(first) if i % 2 else reversed(list(first)):
            status, body, took = conn.get(at[label])
            if status != 200:
                raise BenchError(f"GET {at[label]}: HTTP {status} {body[:200]!r}")
            next_path = _documents(body)[1]
            at[label] = first[label] if next_path is None else next_path
            if i >= warmup:
                samples[label].append(took)
    return {label: _stats(values) for label, values in samples.items()}


def _service(port: int, name: str) -> str:
    return str(procs.rest_call(port, "POST", "/v1/Services", {"FriendlyName": name})["sid"])


def run_scale(plan: ScalePlan, workdir: Path) -> dict[str, Any]:
    redis = procs.start_redis(workdir / "scale")
    try:
        server = procs.SyncServer(workdir / "scale", redis.url).start()
        try:
            return _run(redis, server, plan, workdir)
        finally:
            server.stop()
    finally:
        redis.stop()


def _run(redis: RedisProcess, server: procs.SyncServer, plan: ScalePlan, workdir: Path) -> dict[str, Any]:
    sizes = {"small": plan.small, "big": plan.big}
    services = {label: _service(server.port, f"scale-{label}") for label in sizes}
    created = {
        label: round(create_documents(redis.url, services[label], f"{label}x", n), 2)
        for label, n in sizes.items()
    }
    walks, latency = _latencies(server.port, services, sizes, plan)
    write_body(workdir)
    writes: dict[str, list[int]] = {label: [] for label in sizes}
    for _ in range(plan.rounds):
        for label, n in sizes.items():
            plan_ = RestPlan(seconds=plan.write_seconds)
            run = load(server.port, "set", f"{label}x", n, plan_, workdir, service=services[label])
            writes[label].append(run["writes_per_s"])
    burst = expiry_burst(redis, server, plan, workdir)
    return {
        "documents": sizes,
        "create_s": created,
        "create_docs_per_s": round(plan.big / created["big"]) if created["big"] else None,
        "walks": walks,
        "latency": latency,
        "writes_per_s": {label: round(median(values)) for label, values in writes.items()},
        "writes_rounds": writes,
        "expiry": burst,
    }


def _latencies(
    port: int, services: dict[str, str], sizes: dict[str, int], plan: ScalePlan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The walks to the middle of each service, then the interleaved fetch and page latencies."""
    conn = Connection(port)
    try:
        walks = {label: walk_to_middle(conn, services[label], n) for label, n in sizes.items()}
        rng = random.Random(5)
        names = {
            label: [
                f"/v1/Services/{services[label]}/Documents/{label}x{rng.randrange(n):012d}"
                for _ in range(997)
            ]
            for label, n in sizes.items()
        }
        first = {
            label: [f"/v1/Services/{sid}/Documents?PageSize={PAGE_SIZE}"] for label, sid in services.items()
        }
        deep = {label: [walk.pop("deep_path")] for label, walk in walks.items()}
        latency = {
            "fetch": interleaved(conn, names, plan.fetches, '"revision"'),
            "first_page": interleaved(conn, first, plan.pages, '"documents"'),
            "deep_page": interleaved(conn, deep, plan.pages, '"documents"'),
            "walk": interleaved_walk(conn, {label: paths[0] for label, paths in first.items()}, plan.pages),
        }
    finally:
        conn.close()
    return walks, latency


def expiry_burst(
    redis: RedisProcess, server: procs.SyncServer, plan: ScalePlan, workdir: Path
) -> dict[str, Any]:
    """The fleet creates the documents (all due at one second) and waits for the sample's removals;
    1 s after the due second this process counts what is left of them in Redis and over REST."""
    sid = _service(server.port, "scale-expiry")
    prefix = f"burst{int(time.time() * 1000)}"
    config = {
        "mode": "expiry",
        "url": f"ws://127.0.0.1:{server.port}/ws?service={sid}",
        "docs": plan.expiry_documents,
        "connections": 10,
        "dueInS": plan.expiry_due_s,
        "subscribeSample": plan.expiry_sample,
        "prefix": prefix,
        "graceMs": 5000,
    }
    fleet = Fleet(config, workdir).start()
    try:
        ready = fleet.expect("READY", plan.expiry_due_s + 60)
        due = ready["dueAtMs"] / 1000
        time.sleep(max(0.0, due - 0.3 - time.time()))
        with SweepWatch(redis) as watch:
            time.sleep(max(0.0, due + 1.0 - time.time()))
            asked = time.time() - due
            left = listed_in_redis(redis, sid)  # Redis answers once any sweep script running is done
            answered = time.time() - due
        gone = rest_gone(server.port, sid, prefix, plan.expiry_documents, ready["subscribed"])
        result = fleet.expect("RESULT", 30)
    finally:
        fleet.stop()
    if result["missing"] or result["wrongReason"]:
        raise BenchError(
            f"expiry burst: {result['missing']} removals missing, {result['wrongReason']} with a wrong reason"
        )
    return {
        "documents": plan.expiry_documents,
        "subscribed": result["subscribed"],
        "create_s": round(ready["createMs"] / 1000, 3),
        "moved_to_the_due_second": ready["moved"],
        "lag_ms": result["lagMs"],
        "checked_s_after_due": round(asked, 3),
        "answered_s_after_due": round(answered, 3),
        **watch.figures,
        "left_in_redis": left,
        "rest_sampled": gone[1],
        "rest_still_found": gone[1] - gone[0],
    }


class SweepWatch:
    """What Redis spent on the sweep around the due second: the time its ``expire_sweep`` calls ran
    (SLOWLOG with every command logged, the bench's own Redis only) and its CPU time (``/proc``)."""

    def __init__(self, redis: RedisProcess) -> None:
        assert redis.port is not None and redis.pid is not None
        self.client = SyncRedis(host="127.0.0.1", port=redis.port)
        self.pid = redis.pid
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> SweepWatch:
        self.saved = self.client.config_get("slowlog-*")
        self.client.config_set("slowlog-max-len", 8192)
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.slowlog_reset()
        self.cpu = procs.cpu_seconds([self.pid])
        self.started = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu = procs.cpu_seconds([self.pid]) - self.cpu
        seconds = time.time() - self.started
        sha = load_scripts()["expire_sweep"].sha.encode()
        entries = self.client.slowlog_get(8192)
        for key, value in self.saved.items():
            self.client.config_set(key, value)
        self.client.close()
        sweeps = [e for e in entries if e["command"].startswith(b"EVALSHA " + sha)]
        self.figures = {
            "window_s": round(seconds, 3),
            "redis_cpu_ms": round(cpu * 1000, 1),
            "sweep_calls": len(sweeps),
            "sweep_redis_ms": round(sum(e["duration"] for e in sweeps) / 1000, 1),
            "slowest_sweep_call_ms": round(max((e["duration"] for e in sweeps), default=0) / 1000, 1),
        }


def listed_in_redis(redis: RedisProcess, service_sid: str) -> int:
    """Entries left in the service's listing index over all partitions (the sweep removes each one
    in the script that publishes its ``removed``)."""
    assert redis.port is not None
    client = SyncRedis(host="127.0.0.1", port=redis.port)
    try:
        pipe = client.pipeline(transaction=False)
        for partition in range(keys.PARTITIONS):
            pipe.zcard(keys.index(partition, service_sid))
        return sum(int(n) for n in pipe.execute())
    finally:
        client.close()


def rest_gone(port: int, service_sid: str, prefix: str, docs: int, subscribed: int) -> tuple[int, int]:
    """(404s, requests) over REST for up to 200 of the documents nobody subscribed to."""
    stride = max(1, docs // max(1, subscribed))
    unsubscribed = [i for i in range(docs) if i % stride][:: max(1, docs // 200)][:200]
    conn = Connection(port)
    try:
        statuses = [conn.get(f"/v1/Services/{service_sid}/Documents/{prefix}-{i}")[0] for i in unsubscribed]
    finally:
        conn.close()
    return statuses.count(404), len(statuses)
