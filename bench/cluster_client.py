"""Which client should carry the store's scripts on a Redis Cluster: calls/s of a write-like script.

``.venv/bin/python -m bench.cluster_client [--runs 3] [--seconds 5] [--callers 64] [--binary PATH]``

Starts its own standalone Redis and its own 3 + 3 cluster (``tests/support/cluster.py``: the harness
lives with the tests and needs nothing but the server package, so the benchmark reuses it) on free
loopback ports, loads one Lua script that mimics a document write (HGET the revision, HSET data and
revision, PUBLISH the event; SPUBLISH on the cluster) on one hash-tagged document of 1000, and runs
``--callers`` concurrent callers for ``--seconds`` on each client:

- ``a``  ``MultiplexedRedis`` on standalone: what the server does today (the baseline);
- ``b``  redis-py's asyncio ``Redis`` (pooled) on standalone;
- ``c``  redis-py's asyncio ``RedisCluster`` on the cluster;
- ``d``  the server's own cluster client, ``sync_server.store.cluster_client.ClusterRouter`` (one
  ``MultiplexedRedis`` per master, a slot map from CLUSTER SLOTS, MOVED/ASK/TRYAGAIN handled), built by
  ``connect_store`` as the store builds it, with the EVAL fallback of ``ScriptRunner``.

Each run measures every client in turn and reports calls/s, the ratio to ``a`` in the same run, client
CPU µs per call (this process's CPU time ÷ calls) and Redis CPU µs per call (utime + stime of the
serving nodes from ``/proc``; replicas apart). ``--failover`` adds, after the runs, a SIGKILL of a master
under load for ``c`` and ``d``: errors the callers saw, by type, and the time until writes succeed again.
``--reshard`` adds a live slot migration under load for ``c`` and ``d`` (see :func:`reshard`).
``--runs 0`` skips the throughput runs.
Everything runs under uvloop, as the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from sync_server.embedded import RedisProcess
from sync_server.store.cluster_client import ClusterRouter, connect_store
from sync_server.store.multiplex import MultiplexedRedis
from tests.support.cluster import ClusterNode, ClusterProcesses

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RESULTS = Path(__file__).resolve().parent / "results"

# A document write in miniature: the revision check-and-bump, the data write and the event, one key.
SCRIPT = b"""
-- KEYS[1] the document hash        bench:{tag}:doc
-- KEYS[2] its event channel        bench:{tag}:events (same hash tag: same slot, so SPUBLISH is local)
-- ARGV[1] 'PUBLISH' or 'SPUBLISH'
-- ARGV[2] the data (JSON)
-- Returns the new revision.
local revision = tonumber(redis.call('HGET', KEYS[1], 'r') or '0') + 1
redis.call('HSET', KEYS[1], 'r', revision, 'd', ARGV[2])
redis.call(ARGV[1], KEYS[2], '{"r":' .. revision .. ',"d":' .. ARGV[2] .. '}')
return revision
"""
DATA = json.dumps({"text": "x" * 1000, "n": 1}, separators=(",", ":")).encode()

Call = Callable[[bytes, bytes], Awaitable[Any]]


# --- measuring -------------------------------------------------------------------------------------


@dataclass
class Result:
    client: str
    calls: int
    seconds: float
    client_cpu_s: float
    redis_cpu_s: float
    replica_cpu_s: float
    errors: dict[str, int] = field(default_factory=dict)
    # For a client other than "a": the mean rate of the "a" slices right before and after it.
    baseline_rate: float | None = None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def client_us(self) -> float:
        return 1e6 * self.client_cpu_s / max(self.calls, 1)

    @property
    def redis_us(self) -> float:
        return 1e6 * self.redis_cpu_s / max(self.calls, 1)


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def documents(count: int) -> list[tuple[bytes, bytes]]:
    """(hash key, channel) of ``count`` documents with random hash tags, as SIDs would give."""
    tags = [secrets.token_hex(16) for _ in range(count)]
    return [(f"bench:{{{t}}}:doc".encode(), f"bench:{{{t}}}:events".encode()) for t in tags]


async def drive(
    name: str,
    call: Call,
    docs: list[tuple[bytes, bytes]],
    *,
    callers: int,
    seconds: float,
    masters: list[int | None],
    replicas: list[int | None],
    warmup: float = 0.5,
) -> Result:
    """``callers`` concurrent loops of ``call`` over ``docs`` in rotation; a warm-up, then ``seconds``."""
    counter = 0
    measuring = False
    calls = 0
    errors: collections.Counter[str] = collections.Counter()
    stop_at = 0.0

    async def caller() -> None:
        nonlocal counter, calls
        while time.monotonic() < stop_at:
            key, channel = docs[counter % len(docs)]
            counter += 1
            try:
                await call(key, channel)
            except RedisError as exc:
                errors[type(exc).__name__] += 1
                continue
            if measuring:
                calls += 1

    stop_at = time.monotonic() + warmup + seconds
    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    await asyncio.sleep(warmup)
    measuring = True
    began, cpu = time.monotonic(), time.process_time()
    redis_cpu = sum(cpu_seconds(p) for p in masters)
    replica_cpu = sum(cpu_seconds(p) for p in replicas)
    await asyncio.sleep(seconds)
    measuring = False
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
    redis_cpu = sum(cpu_seconds(p) for p in masters) - redis_cpu
    replica_cpu = sum(cpu_seconds(p) for p in replicas) - replica_cpu
    await asyncio.gather(*tasks)
    return Result(name, calls, elapsed, cpu, redis_cpu, replica_cpu, dict(errors))


class Clients:
    """The four clients, each as ``call(key, channel)`` running the script once, plus their setup."""

    def __init__(self, standalone: RedisProcess, cluster: ClusterProcesses) -> None:
        self.standalone = standalone
        self.cluster = cluster
        self.sha = ""
        self.multiplexed = MultiplexedRedis({"host": "127.0.0.1", "port": standalone.port})
        self.pooled = Redis(host="127.0.0.1", port=standalone.port or 0)
        # redis-py closes every connection of the client (in use or not) after each reinitialize_steps-th
        # MOVED; REINITIALIZE_STEPS=0 (env) turns that off, to see what it costs during a reshard.
        steps = int(os.environ.get("REINITIALIZE_STEPS", "5"))
        self.redis_cluster = RedisCluster(
            host="127.0.0.1", port=cluster.masters()[0].port, reinitialize_steps=steps
        )
        self.routed: ClusterRouter | None = None

    async def setup(self) -> None:
        self.sha = await self.pooled.script_load(SCRIPT)
        await self.redis_cluster.initialize()
        assert await self.redis_cluster.script_load(SCRIPT) == self.sha  # every primary
        routed = await connect_store(self.cluster.url)
        assert isinstance(routed, ClusterRouter)
        self.routed = routed

    async def a(self, key: bytes, channel: bytes) -> Any:
        try:
            return await self.multiplexed.execute("EVALSHA", self.sha, 2, key, channel, "PUBLISH", DATA)
        except NoScriptError:
            return await self.multiplexed.execute("EVAL", SCRIPT, 2, key, channel, "PUBLISH", DATA)

    async def b(self, key: bytes, channel: bytes) -> Any:
        return await self.pooled.evalsha(self.sha, 2, key, channel, "PUBLISH", DATA)

    async def c(self, key: bytes, channel: bytes) -> Any:
        try:
            return await self.redis_cluster.evalsha(self.sha, 2, key, channel, "SPUBLISH", DATA)
        except NoScriptError:
            return await self.redis_cluster.eval(SCRIPT.decode(), 2, key, channel, "SPUBLISH", DATA)

    async def d(self, key: bytes, channel: bytes) -> Any:
        routed = self.routed
        assert routed is not None
        try:
            return await routed.execute_keyed(key, "EVALSHA", self.sha, 2, key, channel, "SPUBLISH", DATA)
        except NoScriptError:
            return await routed.execute_keyed(key, "EVAL", SCRIPT, 2, key, channel, "SPUBLISH", DATA)

    async def aclose(self) -> None:
        await self.multiplexed.aclose()
        await self.pooled.aclose()
        await self.redis_cluster.aclose()
        if self.routed is not None:
            await self.routed.aclose()


def pids(nodes: list[ClusterNode]) -> list[int | None]:
    return [n.pid for n in nodes]


async def measure(
    args: argparse.Namespace, standalone: RedisProcess, cluster: ClusterProcesses
) -> list[list[Result]]:
    clients = Clients(standalone, cluster)
    docs = documents(args.docs)
    runs: list[list[Result]] = []
    try:
        await clients.setup()
        # The baseline runs before and after every other client, and each ratio uses the two "a" slices
        # around it: the box is shared, and its load drifts over a run's half minute.
        sequence = ["a"]
        for name in args.only:
            if name != "a":
                sequence += [name, "a"]
        for run in range(args.runs):
            results = []
            for name in sequence:
                on_cluster = name in ("c", "d")
                result = await drive(
                    name,
                    getattr(clients, name),
                    docs,
                    callers=args.callers,
                    seconds=args.seconds,
                    masters=pids(cluster.masters()) if on_cluster else [standalone.pid],
                    replicas=pids(cluster.replicas()) if on_cluster else [],
                )
                results.append(result)
                print(f"run {run + 1} {name}: {result.rate:,.0f} calls/s {result.errors or ''}", flush=True)
            for index in range(1, len(results), 2):
                results[index].baseline_rate = (results[index - 1].rate + results[index + 1].rate) / 2
            runs.append(results)
    finally:
        await clients.aclose()
    return runs


async def failover(
    name: str, standalone: RedisProcess, cluster: ClusterProcesses, callers: int
) -> dict[str, Any]:
    """SIGKILL the master of the hottest documents while ``callers`` write through client ``name``;
    report what the callers saw and how long writes failed."""
    cluster.heal()
    clients = Clients(standalone, cluster)
    await clients.setup()
    docs = documents(200)
    call: Call = getattr(clients, name)
    victim = cluster.master_of_key(docs[0][0])
    errors: collections.Counter[str] = collections.Counter()
    last_error_at = 0.0
    done = False
    counter = 0

    async def caller() -> None:
        nonlocal counter, last_error_at
        while not done:
            key, channel = docs[counter % len(docs)]
            counter += 1
            try:
                await call(key, channel)
            except Exception as exc:  # any exception is a finding here, not a crash
                errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                last_error_at = time.monotonic()
                await asyncio.sleep(0.01)

    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    await asyncio.sleep(1.0)
    cluster.kill(victim)
    killed_at = time.monotonic()
    # Wait for a write to one of the victim's documents to succeed through the client.
    probe_key, probe_channel = docs[0]
    recovered_at = None
    while time.monotonic() - killed_at < 30:
        try:
            await call(probe_key, probe_channel)
            recovered_at = time.monotonic()
            break
        except Exception as exc:
            errors[f"probe {type(exc).__name__}: {str(exc)[:60]}"] += 1
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    done = True
    await asyncio.gather(*tasks)
    routed = dict(clients.routed.events) if name == "d" and clients.routed else {}
    await clients.aclose()
    return {
        "client": name,
        "writes_fail_for_s": None if recovered_at is None else round(recovered_at - killed_at, 2),
        "errors_seen_by_callers": dict(errors),
        "errors_after_recovery": (last_error_at > (recovered_at or 0)),
        "handled_inside_client": routed,
    }


async def reshard(
    name: str, standalone: RedisProcess, cluster: ClusterProcesses, callers: int, slots: int = 8
) -> dict[str, Any]:
    """Move the slots of ``slots`` documents to another master, one by one, while ``callers`` write 200
    documents through client ``name``: each move holds the keys on the target for 0.3 s before the slot
    is reassigned (the ``ASK`` window), then the old owner answers ``MOVED``. Afterwards every document's
    revision must equal the writes that succeeded on it (no write lost, none applied twice)."""
    cluster.heal()
    clients = Clients(standalone, cluster)
    await clients.setup()
    docs = documents(200)
    call: Call = getattr(clients, name)
    errors: collections.Counter[str] = collections.Counter()
    successes: collections.Counter[bytes] = collections.Counter()
    done = False
    counter = 0

    async def caller() -> None:
        nonlocal counter
        while not done:
            key, channel = docs[counter % len(docs)]
            counter += 1
            try:
                await call(key, channel)
            except Exception as exc:  # any exception is a finding here, not a crash
                errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                await asyncio.sleep(0.01)
            else:
                successes[key] += 1

    def move(slot: int) -> None:
        source = cluster.master_of_slot(slot)
        target = next(m for m in cluster.masters() if m is not source)
        cluster.begin_migration(slot, target)
        cluster.move_keys(slot, source, target)
        time.sleep(0.3)
        cluster.finish_migration(slot, source, target)

    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    await asyncio.sleep(0.5)
    began = time.monotonic()
    for key, _ in docs[:slots]:
        # In a thread: the harness blocks, and the callers must keep writing during the move.
        await asyncio.to_thread(move, key_slot(key))
    moving = time.monotonic() - began
    await asyncio.sleep(0.5)
    done = True
    await asyncio.gather(*tasks)
    revisions = {key: int(await clients.redis_cluster.hget(key, "r") or 0) for key, _ in docs}
    mismatched = {k.decode(): (revisions[k], successes[k]) for k, _ in docs if revisions[k] != successes[k]}
    routed = dict(clients.routed.events) if name == "d" and clients.routed else {}
    await clients.aclose()
    return {
        "client": name,
        "slots_moved": slots,
        "moving_s": round(moving, 2),
        "writes": sum(successes.values()),
        "errors_seen_by_callers": dict(errors),
        "documents_whose_revision_differs_from_successful_writes": len(mismatched),
        "revision_minus_successful_writes": dict(
            collections.Counter(revisions[k] - successes[k] for k, _ in docs if revisions[k] != successes[k])
        ),
        "handled_inside_client": routed,
    }


def table(runs: list[list[Result]]) -> str:
    names = list(dict.fromkeys(r.client for r in runs[0]))
    label = {
        "a": "(a) MultiplexedRedis, standalone (baseline)",
        "b": "(b) redis-py asyncio Redis (pool), standalone",
        "c": "(c) redis-py asyncio RedisCluster, 3+3 cluster",
        "d": "(d) ClusterRouter (multiplexed per master + slot map), 3+3 cluster",
    }
    lines = [
        "| client | calls/s per run | ratio to the (a) around it, per run | median ratio "
        "| client CPU µs/call | Redis CPU µs/call (masters) | replica CPU µs/call |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        slices = [[r for r in run if r.client == name] for run in runs]
        rates = [sum(r.calls for r in run) / sum(r.seconds for r in run) for run in slices]
        if name == "a":
            ratios = [1.0 for _ in runs]
        else:
            ratios = [run[0].rate / (run[0].baseline_rate or float("nan")) for run in slices]
        flat = [r for run in slices for r in run]
        calls = max(sum(r.calls for r in flat), 1)
        lines.append(
            f"| {label[name]} | {' / '.join(f'{r:,.0f}' for r in rates)} | "
            f"{' / '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} | "
            f"{1e6 * sum(r.client_cpu_s for r in flat) / calls:.0f} | "
            f"{1e6 * sum(r.redis_cpu_s for r in flat) / calls:.0f} | "
            f"{1e6 * sum(r.replica_cpu_s for r in flat) / calls:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--only", default="a,b,c,d", type=lambda s: s.split(","))
    parser.add_argument("--binary", help="the redis-server / valkey-server to run (default: as the tests)")
    parser.add_argument("--failover", action="store_true", help="also SIGKILL a master under load (c, d)")
    parser.add_argument("--reshard", action="store_true", help="also move slots under load (c, d)")
    args = parser.parse_args()
    if "a" not in args.only:
        args.only.insert(0, "a")

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    # Both started from the main thread before the event loop: they die with this process.
    standalone = RedisProcess(work / "standalone", binary=args.binary, unix_socket=False).start()
    cluster = ClusterProcesses(work / "cluster", binary=args.binary)
    try:
        cluster.start()
        print(f"{cluster.binary}: cluster ready in {cluster.startup_seconds:.2f}s", flush=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runs = runner.run(measure(args, standalone, cluster)) if args.runs else []
            if runs:
                print()
                print(table(runs))
            report: dict[str, Any] = {
                "binary": cluster.binary,
                "startup_s": cluster.startup_seconds,
                "runs": [[{**asdict(r), "rate": r.rate} for r in run] for run in runs],
            }
            if args.failover:
                report["failover"] = []
                for name in ("c", "d"):
                    outcome = runner.run(failover(name, standalone, cluster, args.callers))
                    print(json.dumps(outcome), flush=True)
                    report["failover"].append(outcome)
            if args.reshard:
                report["reshard"] = []
                for name in ("c", "d"):
                    outcome = runner.run(reshard(name, standalone, cluster, args.callers))
                    print(json.dumps(outcome), flush=True)
                    report["reshard"].append(outcome)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"cluster-client-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {out}")
    finally:
        cluster.stop()
        standalone.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
