"""Websocket scenarios, all driven by the Node fleet: fan-out, idle connections, recovery, expiry.

Every fan-out phase reports deliveries/s, delivery latency and the server's CPU time per 1000
deliveries (utime + stime of the server process read from ``/proc`` by the fleet right before the
first write and right after the last delivery). A missed or duplicated delivery is an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.fleet_process import BenchError, Fleet, ws_url


@dataclass(frozen=True)
class FanoutPlan:
    """How much work each fan-out phase does; ``smoke`` shrinks everything to seconds."""

    closed_deliveries: int  # per closed-loop phase: updates = this / N
    rate_seconds: float  # per fixed-rate phase: updates = rate x this
    rates: tuple[int, ...] = (20, 100)
    window: int = 4

    def phases(self, n: int) -> list[dict[str, Any]]:
        closed = max(20, self.closed_deliveries // n)
        phases: list[dict[str, Any]] = [
            {
                "name": "warmup",
                "kind": "closed",
                "updates": max(10, closed // 10),
                "window": self.window,
                "warmup": True,
            },
            {"name": f"closed W={self.window}", "kind": "closed", "updates": closed, "window": self.window},
        ]
        for rate in self.rates:
            updates = max(5, int(rate * self.rate_seconds))
            phases.append({"name": f"{rate}/s", "kind": "rate", "rate": rate, "updates": updates})
        for phase in phases:
            phase["timeoutMs"] = 60_000
        return phases


def check_phase(label: str, phase: dict[str, Any]) -> None:
    if phase["missed"] or phase["duplicated"] or phase["reason"] != "all-delivered":
        raise BenchError(
            f"{label} {phase['name']}: {phase['missed']} missed, {phase['duplicated']} duplicated "
            f"deliveries ({phase['reason']})"
        )


def run_fanout(
    label: str,
    port: int,
    n: int,
    plan: FanoutPlan,
    cpu_pids: Callable[[], list[int]],
    log_dir: Path,
    redis_pids: list[int] | None = None,
    on_ready: Callable[[], object] | None = None,
    *,
    acl: bool = False,
) -> dict[str, Any]:
    """One fleet of ``n`` subscribers through the warm-up, the closed loop and the fixed rates.

    ``on_ready`` is called once the subscribers are connected (the profiler starts there). With
    ``acl`` the default service has access control on and every client (subscribers and writer) is
    an access-token identity holding read and write on the document: the shape of a browser fleet
    on a locked-down service."""
    doc = f"fanout-{n}-{int(time.time() * 1000)}"
    config: dict[str, Any] = {
        "mode": "fanout",
        "url": ws_url(port),
        "doc": doc,
        "n": n,
        "phases": plan.phases(n),
        "cpuPids": cpu_pids(),
        "redisPids": redis_pids or [],
    }
    if acl:
        config["url"] = f"ws://127.0.0.1:{port}/ws?token={procs.restricted_fleet(port, doc)}"
        config["auth"] = None
    fleet = Fleet(config, log_dir).start()
    try:
        ready = fleet.expect("READY", 120)
        if on_ready is not None:
            on_ready()
        result = fleet.expect("RESULT", 60 * len(config["phases"]) + 30)
    finally:
        fleet.stop()
        if acl:
            procs.rest_call(port, "POST", "/v1/Services/default", {"AclEnabled": "false"})
    for phase in result["phases"]:
        check_phase(label, phase)
    if result["closes"] or result["writeErrors"]:
        raise BenchError(
            f"{label}: {result['closes']} subscribers closed, {result['writeErrors']} writes failed"
        )
    return {"design": label, "subscribers": n, "connect_ms": ready["connectMs"], "phases": result["phases"]}


IDLE_SPARE_FILES = 200
"""Descriptors a server process needs besides its connections (Redis, listening socket, files)."""
PORTS_PER_ADDRESS = 25_000


def run_idle(
    label: str, port: int, pids: list[int], n: int, log_dir: Path, settle: float = 2.0
) -> dict[str, Any]:
    """RSS added per connected, subscribed client, and the time to connect and subscribe them all."""
    limit = procs.raise_fd_limit()
    if n + IDLE_SPARE_FILES > limit:
        # The server holds a descriptor per connection, and so does the fleet.
        raise BenchError(f"idle {label} {n}: needs ~{n + IDLE_SPARE_FILES} open files, the limit is {limit}")
    before = procs.rss_kib(pids)
    config = {
        "mode": "idle",
        "url": ws_url(port),
        "doc": f"idle-{n}",
        "n": n,
        "connectConcurrency": 256,
        # One source address has ~28k ephemeral ports towards one server port: spread beyond that.
        "localAddresses": [f"127.0.0.{i}" for i in range(1, 2 + n // PORTS_PER_ADDRESS)],
    }
    fleet = Fleet(config, log_dir).start()
    try:
        ready = fleet.expect("READY", 300)
        time.sleep(settle)
        after = procs.rss_kib(pids)
        fleet.terminate()
        result = fleet.expect("RESULT", 30)
    finally:
        fleet.stop()
    if result["closes"]:
        raise BenchError(f"idle {label} {n}: {result['closes']} connections closed while idle")
    return {
        "design": label,
        "subscribers": n,
        "connect_s": round(ready["connectMs"] / 1000, 3),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_subscriber": round((after - before) / n, 2),
    }


def run_recovery(
    server: procs.SyncServer, n: int, rate: int, log_dir: Path, *, down_after: float = 1.0
) -> dict[str, Any]:
    """Restart the server under ``n`` subscribers while a writer keeps writing ``rate``/s."""
    config = {
        "mode": "recovery",
        "url": ws_url(server.port),
        "doc": f"recovery-{n}-{int(time.time() * 1000)}",
        "n": n,
        "rate": rate,
        "timeoutMs": 60_000,
    }
    fleet = Fleet(config, log_dir).start()
    try:
        fleet.expect("READY", 120)
        time.sleep(down_after)
        stopped = time.monotonic()
        server.stop()
        server.start()
        restart_s = time.monotonic() - stopped
        result = fleet.expect("RESULT", 90)
    finally:
        fleet.stop()
    if not result["recovered"] or result["stale"] or result["duplicated"]:
        counts = {key: result[key] for key in ("recovered", "stale", "duplicated")}
        raise BenchError(f"recovery: {counts}")
    return {
        "subscribers": n,
        "rate": rate,
        "server_restart_s": round(restart_s, 3),
        "recovery_s": round(result["recoveryMs"] / 1000, 3),
        "stale": result["stale"],
        "duplicated": result["duplicated"],
        "reconnects": result["reconnects"],
        "writes": result["writes"],
        "failed_writes": result["failedWrites"],
    }


def run_expiry(
    server: procs.SyncServer, docs: int, ttl: tuple[int, int], log_dir: Path, connections: int = 10
) -> dict[str, Any]:
    """Delay between each document's ``date_expires`` and its ``removed`` event."""
    config = {
        "mode": "expiry",
        "url": ws_url(server.port),
        "docs": docs,
        "connections": connections,
        "ttlMin": ttl[0],
        "ttlMax": ttl[1],
        "prefix": f"exp{int(time.time() * 1000)}",
        "graceMs": 5000,
    }
    fleet = Fleet(config, log_dir).start()
    try:
        ready = fleet.expect("READY", 120)
        result = fleet.expect("RESULT", ttl[1] + 30)
    finally:
        fleet.stop()
    if result["missing"] or result["wrongReason"]:
        raise BenchError(
            f"expiry: {result['missing']} removals missing, {result['wrongReason']} with a wrong reason"
        )
    return {
        "documents": docs,
        "ttl_s": list(ttl),
        "create_s": round(ready["createMs"] / 1000, 3),
        "lag_ms": result["lagMs"],
    }
