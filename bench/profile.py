"""``--profile``: where the server spends its CPU under fan-out and under REST writes, by py-spy.

Profiles are taken in separate runs from the measured ones (sampling slows the target a little).
Each writes py-spy's collapsed stacks (``profile-*.txt``, feed them to any flamegraph tool) and a
summary of the functions with the most samples, by self time and inclusive time.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.fanout import FanoutPlan, run_fanout
from bench.fleet_process import BenchError
from bench.manydocs import ManyDocsPlan, run_manydocs
from bench.rest import RestPlan, create_documents, load, write_body
from sync_server.embedded import RedisProcess

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    binary = py_spy()
    if binary is None:
        raise BenchError("py-spy is not installed (.venv/bin/pip install py-spy)")
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    command += ["--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _label(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(f) for f in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        for label in set(frames):
            inclusive[label] += count

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[label, round(100 * n / max(total, 1), 1)] for label, n in counter.most_common(top)]

    return {"samples": total, "self_pct": share(self_time), "inclusive_pct": share(inclusive)}


def _write_summary(summary: dict[str, Any], path: Path, title: str) -> None:
    lines = [f"# {title}: {summary['samples']} samples", "", "## self time (% of samples)"]
    lines += [f"{pct:5.1f}  {label}" for label, pct in summary["self_pct"]]
    lines += ["", "## inclusive time (% of samples)"]
    lines += [f"{pct:5.1f}  {label}" for label, pct in summary["inclusive_pct"]]
    path.write_text("\n".join(lines) + "\n")


def profile_fanout(
    redis: RedisProcess, n: int, workdir: Path, out_dir: Path, seconds: float = 8
) -> dict[str, Any]:
    server = procs.SyncServer(workdir / "profile-fanout", redis.url).start()
    raw = out_dir / "profile-fanout.txt"
    try:
        plan = FanoutPlan(closed_deliveries=n * 500, rate_seconds=0, rates=())
        spy: list[subprocess.Popen[bytes]] = []
        # Sampling starts once the subscribers are connected, as the writer starts.
        run_fanout(
            "sync-server",
            server.port,
            n,
            plan,
            server.worker_pids,
            workdir,
            on_ready=lambda: spy.append(record(server.pid, seconds, raw)),
        )
        for process in spy:
            process.wait(30)
    finally:
        server.stop()
    summary = summarize(raw)
    _write_summary(summary, out_dir / "profile-fanout-summary.txt", f"fan-out, N={n}, closed loop W=4")
    return summary


def profile_manydocs(
    redis: RedisProcess, plan: ManyDocsPlan, workdir: Path, out_dir: Path, seconds: float = 8
) -> dict[str, Any]:
    """The first of the two server processes during the many-document closed loop."""
    raw = out_dir / "profile-manydocs.txt"
    spy: list[subprocess.Popen[bytes]] = []
    run_manydocs(
        redis, plan, workdir, on_many=lambda servers: spy.append(record(servers[0].pid, seconds, raw))
    )
    for process in spy:
        process.wait(30)
    if not raw.exists():
        raise BenchError(f"py-spy wrote no profile: the many-documents loop ended within its {seconds:g} s")
    summary = summarize(raw)
    title = (
        f"many documents ({plan.documents:,} x 1-3 subscribers), closed loop W={plan.window}, process 1 of 2"
    )
    _write_summary(summary, out_dir / "profile-manydocs-summary.txt", title)
    return summary


def profile_rest(redis: RedisProcess, workdir: Path, out_dir: Path, seconds: float = 8) -> dict[str, Any]:
    server = procs.SyncServer(workdir / "profile-rest", redis.url).start()
    raw = out_dir / "profile-rest.txt"
    try:
        write_body(workdir)
        create_documents(server.port, "p1x", 1000)
        plan = RestPlan(seconds=seconds + 3)
        worker = threading.Thread(target=load, args=(server.port, "set", "p1x", 1000, plan, workdir))
        worker.start()
        time.sleep(1.5)
        record(server.pid, seconds, raw).wait(seconds + 30)
        worker.join()
    finally:
        server.stop()
    summary = summarize(raw)
    _write_summary(summary, out_dir / "profile-rest-summary.txt", "REST unconditional writes, 1 worker")
    return summary
