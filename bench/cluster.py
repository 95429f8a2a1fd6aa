"""The Redis Cluster scenario (``--only cluster``): the same server on a Redis Cluster of 3 masters with a
replica each and on a single Redis, started fresh by this scenario, measured in the same run.

- *Idle CPU* (first, while both stores are empty): a server with no clients for ``idle_seconds``, at one
  service and again after ``services - 1`` more are made; the server's CPU and the Redis CPU (every
  node: masters and replicas) in % of one core. The expiry sweep costs 64 scripts per 0.2 s whatever the
  number of services, so the goal is no measurable growth.
- *REST writes*: ``wrk`` (or ``loadgen.py``) unconditional 1 KiB updates over ``rest_documents`` named
  documents of the default service, 64 connections, one worker; standalone and cluster alternate for
  ``rest_rounds`` rounds so that the shared box's drift falls on both. Goal: cluster >= 0.8x standalone.
- *List page latency*: ``GET …/Documents?PageSize=50`` one page after another (following
  ``next_page_url``, back to the first page at the end), ``list_pages`` requests on one keep-alive
  connection, in a service of ``list_sizes[0]`` and in one of ``list_sizes[1]`` documents (made through
  the store directly, as REST would lay them out). Goal: the larger service pages no slower.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import procs
from bench.rest import RestPlan, create_documents, load, write_body
from sync_server.principal import Principal
from sync_server.store.redis_store import RedisStore
from tests.support.cluster import ClusterProcesses

Target = tuple[str, float | None, float, bool]


@dataclass(frozen=True)
class ClusterPlan:
    idle_seconds: float = 10.0
    services: int = 1000
    rest_seconds: float = 8.0
    rest_rounds: int = 2
    rest_documents: int = 1000
    connections: int = 64
    list_sizes: tuple[int, int] = (1_000, 100_000)
    list_pages: int = 200


SMOKE_PLAN = ClusterPlan(
    idle_seconds=0.5,
    services=10,
    rest_seconds=1.0,
    rest_rounds=1,
    rest_documents=20,
    connections=8,
    # At 1,000 documents every partition has more than a page asks of it (as at 100,000); below
    # that a page reads fewer documents, so a smaller service is no fair comparison.
    list_sizes=(1000, 3000),
    list_pages=10,
)


class Backend:
    """One store: a single Redis or the cluster, with the Redis processes whose CPU counts."""

    def __init__(self, name: str, url: str, redis_pids: list[int]) -> None:
        self.name = name
        self.url = url
        self.redis_pids = redis_pids

    def server(self, workdir: Path, label: str) -> procs.SyncServer:
        return procs.SyncServer(workdir / f"cluster-{label}-{self.name}", self.url)


def run_cluster(plan: ClusterPlan, workdir: Path) -> dict[str, Any]:
    standalone = procs.start_redis(workdir / "cluster-standalone")
    cluster = ClusterProcesses(workdir / "cluster-nodes", masters=3, replicas=1)
    try:
        cluster.start()
        backends = [
            Backend("standalone", standalone.url, [procs.redis_pid(standalone)]),
            Backend("cluster", cluster.url, [n.pid for n in cluster.nodes if n.pid is not None]),
        ]
        idle = [idle_cpu(backend, plan, workdir) for backend in backends]
        rest = rest_writes(backends, plan, workdir)
        listing = [run for backend in backends for run in list_latency(backend, plan, workdir)]
    finally:
        cluster.stop()
        standalone.stop()
    return {
        "nodes": {"masters": 3, "replicas": 3, "startup_s": round(cluster.startup_seconds or 0, 2)},
        "idle": idle,
        "rest": rest,
        "list": listing,
    }


# -- idle CPU ---------------------------------------------------------------------------------------


def idle_cpu(backend: Backend, plan: ClusterPlan, workdir: Path) -> dict[str, Any]:
    server = backend.server(workdir, "idle").start()
    try:
        procs.rest_call(server.port, "POST", "/v1/Services", {"FriendlyName": "idle-1"})
        time.sleep(0.5)  # past the first sweeps and connections
        one = _cpu_while_idle(server, backend, plan.idle_seconds)
        created = time.monotonic()
        create_services(server.port, plan.services - 1)
        made_s = time.monotonic() - created
        time.sleep(0.5)
        many = _cpu_while_idle(server, backend, plan.idle_seconds)
    finally:
        server.stop()
    return {
        "backend": backend.name,
        "services": [1, plan.services],
        "server_cpu_pct": [one[0], many[0]],
        "redis_cpu_pct": [one[1], many[1]],
        "seconds": plan.idle_seconds,
        "create_services_s": round(made_s, 1),
    }


def _cpu_while_idle(server: procs.SyncServer, backend: Backend, seconds: float) -> tuple[float, float]:
    """(server, Redis) CPU in % of one core over ``seconds`` with no client."""
    pids = server.pids()
    began = time.monotonic()
    server_cpu, redis_cpu = procs.cpu_seconds(pids), procs.cpu_seconds(backend.redis_pids)
    time.sleep(seconds)
    wall = time.monotonic() - began
    server_cpu = procs.cpu_seconds(pids) - server_cpu
    redis_cpu = procs.cpu_seconds(backend.redis_pids) - redis_cpu
    return round(100 * server_cpu / wall, 2), round(100 * redis_cpu / wall, 2)


def create_services(port: int, count: int) -> None:
    def make(part: range) -> None:
        for n in part:
            procs.rest_call(port, "POST", "/v1/Services", {"FriendlyName": f"idle-{n + 2}"})

    lanes = 8
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(make, [range(i, count, lanes) for i in range(lanes)]))


# -- REST writes ------------------------------------------------------------------------------------


def rest_writes(backends: list[Backend], plan: ClusterPlan, workdir: Path) -> dict[str, Any]:
    write_body(workdir)
    load_plan = RestPlan(seconds=plan.rest_seconds, connections=plan.connections)
    servers = {backend.name: backend.server(workdir, "rest").start() for backend in backends}
    redis_pids = {backend.name: backend.redis_pids for backend in backends}
    try:
        for server in servers.values():
            create_documents(server.port, "cw", plan.rest_documents)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for _ in range(plan.rest_rounds):
            for name, server in servers.items():
                # CPU per write as well as writes/s: on a small box the cluster's six Redis processes
                # (replication included) compete with the server for the same cores.
                pids = server.pids()
                cpu = procs.cpu_seconds(pids), procs.cpu_seconds(redis_pids[name])
                run = load(server.port, "set", "cw", plan.rest_documents, load_plan, workdir)
                spent = procs.cpu_seconds(pids) - cpu[0], procs.cpu_seconds(redis_pids[name]) - cpu[1]
                run["server_us_per_write"] = round(1e6 * spent[0] / max(run["requests"], 1), 1)
                run["redis_us_per_write"] = round(1e6 * spent[1] / max(run["requests"], 1), 1)
                runs[name].append(run)
    finally:
        for server in servers.values():
            server.stop()
    rates = {name: statistics.mean(r["writes_per_s"] for r in found) for name, found in runs.items()}
    return {
        "documents": plan.rest_documents,
        "connections": plan.connections,
        "runs": runs,
        "writes_per_s": {name: round(rate) for name, rate in rates.items()},
        "ratio": round(rates["cluster"] / rates["standalone"], 2) if rates["standalone"] else None,
    }


# -- list page latency ------------------------------------------------------------------------------


def list_latency(backend: Backend, plan: ClusterPlan, workdir: Path) -> list[dict[str, Any]]:
    services = asyncio.run(_fill(backend.url, plan.list_sizes))
    server = backend.server(workdir, "list").start()
    try:
        found = []
        for (service, made_s), size in zip(services, plan.list_sizes, strict=True):
            latencies = _page_walk(server.port, service, plan.list_pages)
            found.append(
                {
                    "backend": backend.name,
                    "documents": size,
                    "pages": len(latencies),
                    "p50_ms": round(_percentile(latencies, 50), 2),
                    "p99_ms": round(_percentile(latencies, 99), 2),
                    "create_s": made_s,
                }
            )
        return found
    finally:
        server.stop()


async def _fill(url: str, sizes: tuple[int, ...]) -> list[tuple[str, float]]:
    """One service per size, with that many small documents; (service SID, seconds it took)."""
    store = RedisStore(Redis.from_url(url), procs.ACCOUNT_SID)
    made = []
    try:
        for size in sizes:
            began = time.monotonic()
            service = (await store.create_service({"friendly_name": f"list-{size}"})).sid
            who = Principal.system(service)
            for start in range(0, size, 2000):
                batch = range(start, min(size, start + 2000))
                await asyncio.gather(*(store.create_document(who, None, b'{"n":%d}' % n, 0) for n in batch))
            made.append((service, round(time.monotonic() - began, 1)))
    finally:
        await store.close()
    return made


def _page_walk(port: int, service: str, pages: int) -> list[float]:
    """Milliseconds of each of ``pages`` page requests, walking the list and starting over at its end."""
    auth = base64.b64encode(f"{procs.ACCOUNT_SID}:{procs.AUTH_TOKEN}".encode()).decode()
    headers = {"Authorization": "Basic " + auth}
    first = f"/v1/Services/{service}/Documents?PageSize=50"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    path = first
    try:
        while len(latencies) < pages:
            began = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            latencies.append(1000 * (time.perf_counter() - began))
            if response.status != 200:
                raise RuntimeError(f"listing {service}: HTTP {response.status}")
            following = json.loads(body)["meta"]["next_page_url"]
            path = first if following is None else following.split(f":{port}", 1)[1]
    finally:
        conn.close()
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- report -----------------------------------------------------------------------------------------


def targets(found: dict[str, Any] | None) -> list[Target]:
    if not found:
        return []
    out: list[Target] = [
        ("REST writes/s on the cluster vs a single Redis (>= 0.8x)", found["rest"]["ratio"], 0.8, False)
    ]
    for idle in found["idle"]:
        n, backend = idle["services"][1], idle["backend"]
        for what in ("server", "redis"):
            one, many = idle[f"{what}_cpu_pct"]
            out.append(
                (
                    f"idle {what} CPU, {n:,} vs 1 services, {backend} (<= +0.5 points)",
                    round(many - one, 2),
                    0.5,
                    True,
                )
            )
    small, large = sorted({run["documents"] for run in found["list"]})
    for backend in ("standalone", "cluster"):
        p50 = {run["documents"]: run["p50_ms"] for run in found["list"] if run["backend"] == backend}
        ratio = round(p50[large] / p50[small], 2) if p50.get(small) else None
        out.append(
            (f"list page p50, {large:,} vs {small:,} documents, {backend} (<= 1.5x)", ratio, 1.5, True)
        )
    return out


def markdown(found: dict[str, Any]) -> list[str]:
    def row(*cells: Any) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    def table(title: str, header: list[str], rows: list[str]) -> list[str]:
        return [title, "", row(*header), row(*["---"] * len(header)), *rows, ""]

    rest = found["rest"]

    def each(runs: list[dict[str, Any]], field: str, spec: str) -> str:
        return " / ".join(format(run.get(field, 0), spec) for run in runs)

    rest_rows = [
        row(name, f"{rest['writes_per_s'][name]:,}", each(runs, "writes_per_s", ","),
            each(runs, "p99_ms", ".1f"), each(runs, "server_us_per_write", ".0f"),
            each(runs, "redis_us_per_write", ".0f"))
        for name, runs in rest["runs"].items()
    ]  # fmt: skip
    lines = table(
        f"**Redis Cluster: REST writes** (3 masters + 3 replicas vs a single Redis, 1 worker, "
        f"{rest['connections']} connections, {rest['documents']:,} documents; cluster/standalone = "
        f"{rest['ratio']}x)",
        [
            "store",
            "writes/s (mean)",
            "each run",
            "p99 ms",
            "server CPU µs per write",
            "Redis CPU µs per write",
        ],
        rest_rows,
    )
    idle_rows = []
    for idle in found["idle"]:
        for i, n in enumerate(idle["services"]):
            idle_rows.append(row(idle["backend"], f"{n:,}", f"{idle['server_cpu_pct'][i]:.2f}",
                                 f"{idle['redis_cpu_pct'][i]:.2f}"))  # fmt: skip
    lines += table(
        f"**Redis Cluster: idle CPU** (no clients, {found['idle'][0]['seconds']:g} s each; % of one core; "
        "Redis: every node)",
        ["store", "services", "server CPU %", "Redis CPU %"],
        idle_rows,
    )
    list_rows = [
        row(
            run["backend"],
            f"{run['documents']:,}",
            run["pages"],
            f"{run['p50_ms']:.2f}",
            f"{run['p99_ms']:.2f}",
        )
        for run in found["list"]
    ]
    lines += table(
        "**Redis Cluster: list page latency** (`PageSize=50`, pages walked one after another)",
        ["store", "documents in the service", "pages", "p50 ms", "p99 ms"],
        list_rows,
    )
    return lines
