"""The benchmark runner: ``.venv/bin/python -m bench [--smoke] [--only …] [--profile]`` (or ``bench/run``).

Starts its own Redis and servers on free loopback ports, runs the scenarios, prints a table and
writes ``bench/results/bench-<time>.json`` (and ``latest.json``, ``latest.md``, ``latest.png``).
Exits 1 if a scenario broke (an error, a missed, duplicated or stale delivery); a missed performance
target is reported, not an error. ``--smoke`` runs every scenario once at tiny sizes in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import procs, report
from bench.cluster import SMOKE_PLAN as CLUSTER_SMOKE
from bench.cluster import ClusterPlan, run_cluster
from bench.fanout import FanoutPlan, run_expiry, run_fanout, run_idle, run_recovery
from bench.fleet_process import FLEET_DIR, BenchError, npm_install
from bench.manydocs import ManyDocsPlan, run_manydocs
from bench.rest import RestPlan, run_rest
from bench.scale import ScalePlan, run_scale
from bench.sharedb import SHARED_PEER, peer_available, prepare_peer, run_sharedb
from bench.webhooks import WebhookPlan, run_webhooks

BENCH_DIR = Path(__file__).resolve().parent
SCENARIOS = ("rest", "fanout", "idle", "recovery", "expiry", "cluster", "webhooks", "manydocs", "scale")


@dataclass(frozen=True)
class Plan:
    rest: RestPlan
    fanout: FanoutPlan
    fanout_sizes: tuple[int, ...]
    idle_sizes: tuple[int, ...]
    recovery_subscribers: int
    recovery_rate: int
    expiry_documents: int
    expiry_ttl: tuple[int, int]
    cluster: ClusterPlan
    webhooks: WebhookPlan
    manydocs: ManyDocsPlan
    scale: ScalePlan


FULL = Plan(
    rest=RestPlan(seconds=8),
    fanout=FanoutPlan(closed_deliveries=300_000, rate_seconds=8),
    fanout_sizes=(200, 1000),
    idle_sizes=(1000, 10_000),
    recovery_subscribers=1000,
    recovery_rate=20,
    expiry_documents=1000,
    expiry_ttl=(3, 5),
    cluster=ClusterPlan(),
    webhooks=WebhookPlan(RestPlan(seconds=8)),
    manydocs=ManyDocsPlan(documents=10_000, closed_writes=30_000, rate_seconds=5, hot_deliveries=300_000),
    scale=ScalePlan(),
)
SMOKE = Plan(
    rest=RestPlan(seconds=1, connections=8, documents=50, workers=(1,), redis_requests=2000, rounds=1),
    fanout=FanoutPlan(closed_deliveries=1000, rate_seconds=0.5),
    fanout_sizes=(20,),
    idle_sizes=(50,),
    recovery_subscribers=20,
    recovery_rate=20,
    expiry_documents=20,
    expiry_ttl=(1, 2),
    cluster=CLUSTER_SMOKE,
    webhooks=WebhookPlan(
        RestPlan(seconds=1, connections=8, documents=20), paced_rate=40, paced_seconds=0.25, separate=False
    ),
    manydocs=ManyDocsPlan(
        documents=100, closed_writes=300, rate_seconds=0.5, hot_deliveries=1000, hot_subscribers=20,
        window=16, rate=200, settle=0.5, idle_seconds=0.3,
    ),
    scale=ScalePlan(
        small=200, big=600, write_seconds=1, rounds=1, fetches=50, pages=20, expiry_documents=200,
        expiry_sample=50, expiry_due_s=2,
    ),
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, every scenario once, seconds in total"
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile the server with py-spy (fan-out, REST)"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the broadcast() and ShareDB fan-out runs"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "results", help="results folder (default: bench/results)"
    )
    parser.add_argument(
        "--idle-sizes",
        type=_sizes,
        default=None,
        help="comma-separated subscriber counts of the idle scenario (default 1000,10000; smoke 50)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}")
    return sizes


def ensure_requirements(smoke: bool) -> None:
    """Installs bench/requirements.txt into this interpreter's environment when something is missing.
    Smoke runs never install (CI time); they skip the chart without matplotlib."""
    if smoke or importlib.util.find_spec("matplotlib") is not None:
        return
    print("installing bench/requirements.txt …", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(BENCH_DIR / "requirements.txt"),
        ],
        check=False,
        timeout=600,
    )


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem_kib = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    node = (
        subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
        if _has("node")
        else None
    )
    versions = {}
    for package in ("uvicorn", "starlette", "websockets", "redis", "orjson", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):  # a missing package is just not listed
            versions[package] = version(package)
    redis_version = (
        subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[2:3]
        if _has("redis-server")
        else []
    )
    cores = os.cpu_count()
    memory = f"{mem_kib / 1024 / 1024:.0f} GiB"
    summary = f"{cores} cores ({cpu}), {memory}, Python {platform.python_version()}, node {node}"
    return {
        "summary": summary,
        "cores": cores,
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "redis": redis_version[0].removeprefix("v=") if redis_version else None,
        "packages": versions,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _has(binary: str) -> bool:
    return shutil.which(binary) is not None


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = SMOKE if args.smoke else FULL
        if args.idle_sizes:
            self.plan = replace(self.plan, idle_sizes=args.idle_sizes)
        self.only = set(args.only.split(","))
        self.workdir = Path(tempfile.mkdtemp(prefix="sync-bench-"))
        self.results: dict[str, Any] = {
            "smoke": args.smoke,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "fanout_sizes": list(self.plan.fanout_sizes),
            "failures": [],
        }

    def step(self, name: str, action: Callable[[], Any]) -> Any:
        print(f"-- {name}", flush=True)
        started = time.monotonic()
        try:
            value = action()
        except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.results["failures"].append(f"{name}: {exc}")
            print(f"   FAILED: {exc}", flush=True)
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            return None
        print(f"   done in {time.monotonic() - started:.1f}s", flush=True)
        return value

    def run(self) -> dict[str, Any]:
        redis = procs.start_redis(self.workdir)
        try:
            self.step("install the fleet", lambda: npm_install(FLEET_DIR))
            if "rest" in self.only:
                self.results["rest"] = self.step(
                    "REST writes", lambda: run_rest(redis, self.plan.rest, self.workdir)
                )
            if "fanout" in self.only:
                self.results["fanout"] = [r for r in self.fanout(redis) if r]
            if "idle" in self.only:
                idle = [self.step(f"idle {n}", lambda n=n: self.idle(redis, n)) for n in self.plan.idle_sizes]
                self.results["idle"] = [run for runs in idle if runs for run in runs]
            if "recovery" in self.only:
                self.results["recovery"] = self.step("recovery", lambda: self.recovery(redis))
            if "expiry" in self.only:
                self.results["expiry"] = self.step("expiry", lambda: self.expiry(redis))
            if "cluster" in self.only:
                # Its own single Redis and cluster, fresh: idle CPU is measured on empty stores.
                self.results["cluster"] = self.step(
                    "Redis Cluster vs a single Redis", lambda: run_cluster(self.plan.cluster, self.workdir)
                )
            if "webhooks" in self.only:
                self.results["webhooks"] = self.step(
                    "webhooks", lambda: run_webhooks(redis, self.plan.webhooks, self.workdir)
                )
            if "manydocs" in self.only:
                self.results["manydocs"] = self.step(
                    "many documents", lambda: run_manydocs(redis, self.plan.manydocs, self.workdir)
                )
            if "scale" in self.only:  # on its own Redis: "1,000 documents" means what it says
                self.results["scale"] = self.step("scale", lambda: run_scale(self.plan.scale, self.workdir))
            if self.args.profile:
                self.results["profiles"] = self.step("py-spy profiles", lambda: self.profiles(redis))
        finally:
            redis.stop()
        self.results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        return self.results

    def fanout(self, redis: Any) -> list[dict[str, Any] | None]:
        plan, out = self.plan.fanout, []
        server = procs.SyncServer(self.workdir / "fanout", redis.url).start()
        try:
            for n in self.plan.fanout_sizes:
                out.append(
                    self.step(
                        f"fan-out sync-server N={n}",
                        lambda n=n: run_fanout(
                            "sync-server",
                            server.port,
                            n,
                            plan,
                            server.worker_pids,
                            self.workdir,
                            [procs.redis_pid(redis)],
                        ),
                    )
                )
                # The same with access control on: every client a restricted token identity.
                out.append(
                    self.step(
                        f"fan-out sync-server+acl N={n}",
                        lambda n=n: run_fanout(
                            "sync-server+acl",
                            server.port,
                            n,
                            plan,
                            server.worker_pids,
                            self.workdir,
                            [procs.redis_pid(redis)],
                            acl=True,
                        ),
                    )
                )
        finally:
            server.stop()
        if self.args.no_baselines:
            return out
        broadcast = procs.ws_broadcast(self.workdir).start()
        try:
            for n in self.plan.fanout_sizes:
                out.append(
                    self.step(
                        f"fan-out ws-broadcast N={n}",
                        lambda n=n: run_fanout(
                            "ws-broadcast", broadcast.port, n, plan, broadcast.pids, self.workdir
                        ),
                    )
                )
        finally:
            broadcast.stop()
        if not peer_available():
            # The peer lives in the team's shared folder beside the checkout, not in this repository.
            note = f"ShareDB peer skipped: not found at {SHARED_PEER} (set BENCH_SHAREDB_DIR)"
            self.results.setdefault("skipped", []).append(note)
            print(f"-- {note}", flush=True)
            return out
        self.step("install the ShareDB peer", lambda: npm_install(prepare_peer()))
        for n in self.plan.fanout_sizes:
            out.append(
                self.step(
                    f"fan-out ShareDB N={n}",
                    lambda n=n: run_sharedb(
                        n, plan.closed_deliveries, plan.rate_seconds, plan.rates, self.workdir / "sharedb"
                    ),
                )
            )
        return out

    def idle(self, redis: Any, n: int) -> list[dict[str, Any]]:
        """The sync server, then the broadcast() baseline, each fresh, with ``n`` idle subscribers."""
        settle = 0.5 if self.args.smoke else 2.0
        server = procs.SyncServer(self.workdir / f"idle-{n}", redis.url).start()
        try:
            found = [run_idle("sync-server", server.port, server.worker_pids(), n, self.workdir, settle)]
        finally:
            server.stop()
        if not self.args.no_baselines:
            baseline = procs.ws_broadcast(self.workdir).start()
            try:
                found.append(
                    run_idle("ws-broadcast", baseline.port, baseline.pids(), n, self.workdir, settle)
                )
            finally:
                baseline.stop()
        return found

    def recovery(self, redis: Any) -> dict[str, Any]:
        server = procs.SyncServer(self.workdir / "recovery", redis.url).start()
        try:
            return run_recovery(server, self.plan.recovery_subscribers, self.plan.recovery_rate, self.workdir)
        finally:
            server.stop()

    def expiry(self, redis: Any) -> dict[str, Any]:
        server = procs.SyncServer(self.workdir / "expiry", redis.url).start()
        try:
            return run_expiry(server, self.plan.expiry_documents, self.plan.expiry_ttl, self.workdir)
        finally:
            server.stop()

    def profiles(self, redis: Any) -> dict[str, Any]:
        from bench.profile import profile_fanout, profile_manydocs, profile_rest

        n = max(self.plan.fanout_sizes)
        seconds = 2 if self.args.smoke else 8
        found = {
            "fanout": profile_fanout(redis, n, self.workdir, self.args.out, seconds),
            "rest": profile_rest(redis, self.workdir, self.args.out, seconds),
        }
        if "manydocs" in self.only:
            plan = self.plan.manydocs
            plan = replace(plan, closed_writes=plan.closed_writes * 2, rate_seconds=0.5, hot_deliveries=0)
            found["manydocs"] = profile_manydocs(redis, plan, self.workdir, self.args.out, seconds)
        return found


def save(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "smoke" if results["smoke"] else "bench"
    text = json.dumps(results, indent=1)
    path = out / f"{kind}-{stamp}.json"
    path.write_text(text)
    (out / f"{kind}-latest.json").write_text(text)
    (out / f"{kind}-latest.md").write_text(report.markdown(results))
    if not report.chart(results, out / f"{kind}-latest.png"):
        print("(no chart: matplotlib is not installed; pip install -r bench/requirements.txt)")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.raise_fd_limit()
    ensure_requirements(args.smoke)
    started = time.monotonic()
    runner = Runner(args)
    results = runner.run()
    results["seconds"] = round(time.monotonic() - started, 1)
    path = save(results, args.out)
    print()
    host = results["machine"]
    print(f"machine: {host['summary']}; load average {' '.join(host['loadavg_start'])}")
    print(report.markdown(results))
    if results["failures"]:
        print(f"logs of the failed run: {runner.workdir}")
    else:
        shutil.rmtree(runner.workdir, ignore_errors=True)
    print(f"results: {path} (and {args.out}/*-latest.{{json,md,png}}); {results['seconds']}s")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
