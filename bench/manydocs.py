"""Many documents, few subscribers each (issue 13, goal 3): the shape of one document per user.

Two sync-server processes (``--workers 1`` each, separate ports) on one Redis; the Node fleet
(``fleet/manydocs.js``) creates the documents, gives each 1-3 subscribers (a connection each, a
document's subscribers spread over both processes) and writes over all documents through one writer
per process. Phases, all measured from ``/proc`` CPU of both server processes and of Redis:

- *writes only*: the same writes before anyone subscribes: the write path's own cost per write;
- *many documents*: a closed loop with W writes in flight, then a fixed rate (p99 at a usual load);
- *one hot document*: on the same servers and fleet, ``hot_subscribers`` connections on one document,
  the fan-out scenario's closed loop (W=4) and 20 updates/s: the per-delivery baseline of goal 3.

Also the time to connect and subscribe everyone, and the servers' RSS added per subscription.
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.fleet_process import BenchError, Fleet, ws_url
from sync_server.embedded import RedisProcess


@dataclass(frozen=True)
class ManyDocsPlan:
    documents: int
    closed_writes: int  # many-document closed loop
    rate_seconds: float  # each fixed-rate phase
    hot_deliveries: int  # hot closed loop: writes = this / hot_subscribers
    hot_subscribers: int = 1000
    window: int = 64
    rate: int = 1000  # writes/s over the many documents (~2 deliveries each)
    hot_rate: int = 20
    subscribers: tuple[int, int] = (1, 3)
    settle: float = 2.0
    servers: int = 2
    idle_seconds: float = 3.0  # each of the two windows without writes (the background CPU)

    def phases(self) -> dict[str, list[dict[str, Any]]]:
        def spec(name: str, target: str, kind: str, writes: int, **extra: Any) -> dict[str, Any]:
            return {
                "name": name,
                "target": target,
                "kind": kind,
                "writes": max(5, writes),
                "timeoutMs": 180_000,
            } | extra

        many, hot = self.closed_writes, max(20, self.hot_deliveries // self.hot_subscribers)
        return {
            "none": [
                spec("writes warmup", "none", "closed", many // 10, window=self.window, warmup=True),
                spec(f"writes only W={self.window}", "none", "closed", many, window=self.window),
            ],
            "many": [
                spec("many warmup", "many", "closed", many // 10, window=self.window, warmup=True),
                spec(f"many closed W={self.window}", "many", "closed", many, window=self.window),
                spec(
                    f"many {self.rate}/s", "many", "rate", int(self.rate * self.rate_seconds), rate=self.rate
                ),
            ],
            "hot": [
                spec("hot warmup", "hot", "closed", hot // 10, window=4, warmup=True),
                spec("hot closed W=4", "hot", "closed", hot, window=4),
                spec(
                    f"hot {self.hot_rate}/s", "hot", "rate", int(self.hot_rate * self.rate_seconds),
                    rate=self.hot_rate,
                ),
            ],
        }  # fmt: skip


def check_phases(result: dict[str, Any]) -> None:
    for phase in result["phases"]:
        losses = {key: phase[key] for key in ("missed", "duplicated", "stale", "misrouted")}
        if any(losses.values()) or phase["reason"] != "all-delivered" or phase["written"] != phase["writes"]:
            raise BenchError(f"manydocs {phase['name']}: {losses}, {phase['written']} of {phase['writes']} "
                             f"writes done ({phase['reason']})")  # fmt: skip
    if result["closes"] or result["writeErrors"] or result["stray"]:
        counts = {key: result[key] for key in ("closes", "writeErrors", "stray")}
        raise BenchError(f"manydocs: {counts}")


def run_manydocs(
    redis: RedisProcess,
    plan: ManyDocsPlan,
    workdir: Path,
    on_many: Callable[[list[procs.SyncServer]], object] | None = None,
) -> dict[str, Any]:
    """The scenario on its own servers; returns the fleet's phases plus subscribe time and RSS.
    ``on_many`` is called as the many-document closed loop starts (the profiler starts there)."""
    servers = [procs.SyncServer(workdir / f"manydocs-{i}", redis.url) for i in range(plan.servers)]
    try:
        with ThreadPoolExecutor(plan.servers) as pool:  # each start waits for /healthz: side by side
            list(pool.map(procs.SyncServer.start, servers))
        return _run(redis, servers, plan, workdir, on_many)
    finally:
        for server in servers:
            server.stop()


def _run(
    redis: RedisProcess,
    servers: list[procs.SyncServer],
    plan: ManyDocsPlan,
    workdir: Path,
    on_many: Callable[[list[procs.SyncServer]], object] | None,
) -> dict[str, Any]:
    server_pids = [server.worker_pids() for server in servers]
    every_pid = [pid for pids in server_pids for pid in pids]
    config: dict[str, Any] = {
        "mode": "manydocs",
        "urls": [ws_url(server.port) for server in servers],
        "docs": plan.documents,
        "minSubs": plan.subscribers[0],
        "maxSubs": plan.subscribers[1],
        "hotSubscribers": plan.hot_subscribers,
        "prefix": f"many{int(time.time() * 1000)}",
        "phases": plan.phases(),
        "serverPids": server_pids,
        "redisPids": [procs.redis_pid(redis)],
        "connectConcurrency": 256,
        "shards": shards(plan),
        "idleMs": int(plan.idle_seconds * 1000),
        "seed": 13,
        "hardTimeoutMs": 900_000,
    }
    fleet = Fleet(config, workdir).start()
    try:
        created = fleet.expect("CREATED", 300)
        fleet.expect("BASELINE", 600)
        rss_before = procs.rss_kib(every_pid)
        _resume(fleet)
        subscribed = fleet.expect("SUBSCRIBED", 600)
        time.sleep(plan.settle)
        rss_after = procs.rss_kib(every_pid)
        _resume(fleet)
        if on_many is not None:
            while not fleet.expect("START", 600)["name"].startswith("many closed"):
                pass
            on_many(servers)
        result = fleet.expect("RESULT", 900)
    finally:
        fleet.stop()
    check_phases(result)
    subscriptions = subscribed["subscriptions"]
    return {
        "servers": plan.servers,
        "documents": plan.documents,
        "subscriptions": subscriptions,
        "documents_by_subscribers": result["byCount"],
        "hot_subscribers": plan.hot_subscribers,
        "fleet_processes": result["shards"] + 1,
        "idle": result["idle"],
        "create_s": round(created["createMs"] / 1000, 3),
        "subscribe_s": round(subscribed["subscribeMs"] / 1000, 3),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_subscription": round((rss_after - rss_before) / max(1, subscriptions), 2),
        "phases": result["phases"],
    }


def shards(plan: ManyDocsPlan) -> int:
    """Subscriber processes for the fleet: as many as the open-file limit needs (each connection is a
    file; the limit is per process, often 20,000, and only root may raise it)."""
    low, high = plan.subscribers
    connections = int(plan.documents * (low + high) / 2 * 1.05) + plan.hot_subscribers
    per_process = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1000
    if per_process < 1000:
        raise BenchError(f"the open-file limit is too low for the fleet: {per_process + 1000}")
    return -(-connections // per_process)


def _resume(fleet: Fleet) -> None:
    if fleet.process is not None:
        fleet.process.send_signal(signal.SIGUSR1)


def phase(result: dict[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    """The measured phase whose name starts with ``prefix`` (``writes only``, ``many closed``, …)."""
    for found in (result or {}).get("phases", []):
        if found["name"].startswith(prefix):
            return dict(found)
    return None


def write_path(result: dict[str, Any] | None) -> float | None:
    """Server CPU seconds per write of the writes-only phase, its background (the idle window before
    anyone subscribed, per second) taken out."""
    writes = phase(result, "writes only")
    if result is None or writes is None or not writes["written"]:
        return None
    background = result["idle"]["before"]["serverCpuPerS"] * writes["seconds"]
    return float(max(0.0, writes["serverCpuS"] - background) / writes["written"])


def delivery_side(result: dict[str, Any] | None, prefix: str) -> float | None:
    """Server CPU ms per 1k deliveries of the phase ``prefix`` with what is not delivering taken out:
    the background (the idle window with everyone subscribed, per second, times the phase's length)
    and the write path (:func:`write_path` times the phase's writes)."""
    found, per_write = phase(result, prefix), write_path(result)
    if result is None or found is None or not found["deliveries"] or per_write is None:
        return None
    background = result["idle"]["subscribed"]["serverCpuPerS"] * found["seconds"]
    rest = found["serverCpuS"] - background - per_write * found["written"]
    return round(rest * 1e6 / found["deliveries"], 2)
