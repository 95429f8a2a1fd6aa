"""The ShareDB peer (the team's ``shared/peers/sharedb``) with the same N and rates.

Its scripts are not part of this repository: they are copied at run time from the shared folder
beside the checkout (or ``BENCH_SHAREDB_DIR``) into ``bench/results/sharedb-peer/``, where its
dependencies are installed from its lockfile.

One ShareDB server (in-memory pub/sub), N subscribers of one json0 document in one Node process
(``clients.js``) and one writer (``writer.js``). ShareDB allows one op in flight per document and
client, so its closed loop is W=1 (the sync server's is W=4). Server CPU comes from ``/proc`` of the
``server.js`` process, read before the writer starts and after the last delivery.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.fleet_process import BenchError, npm_install

PEER_FILES = ("server.js", "clients.js", "writer.js", "package.json", "package-lock.json")
SHARED_PEER = Path(
    os.environ.get("BENCH_SHAREDB_DIR", Path(__file__).resolve().parents[2] / "shared" / "peers" / "sharedb")
)
PEER_DIR = Path(__file__).resolve().parent / "results" / "sharedb-peer"


def peer_available() -> bool:
    return (SHARED_PEER / "server.js").is_file()


def prepare_peer() -> Path:
    """Copies the peer's scripts next to the results (once, or when they changed) and returns the folder."""
    if not (SHARED_PEER / "server.js").is_file():
        raise BenchError(f"the ShareDB peer is not at {SHARED_PEER} (set BENCH_SHAREDB_DIR)")
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    for name in PEER_FILES:
        source, target = SHARED_PEER / name, PEER_DIR / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            target.write_bytes(source.read_bytes())
    return PEER_DIR


def _node(script: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["node", script],
            cwd=PEER_DIR,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(log: Path, marker: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if line.startswith(marker):
                return line
        if process.poll() is not None:
            raise BenchError(f"sharedb: {log.name} exited before {marker}: {text[-500:]}")
        time.sleep(0.05)
    raise BenchError(f"sharedb: no {marker} in {log.name} within {timeout:g}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def run_phase(
    port: int, server_pid: int, n: int, ops: int, mode: str, rate: int, workdir: Path
) -> dict[str, Any]:
    tag = f"{n}-{mode}-{rate}-{int(time.time() * 1000)}"
    clients_log, writer_log = workdir / f"clients-{tag}.log", workdir / f"writer-{tag}.log"
    url = f"ws://127.0.0.1:{port}"
    clients = _node(
        "clients.js", {"N": str(n), "OPS": str(ops), "URLS": url, "TIMEOUT_MS": "90000"}, clients_log
    )
    writer: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(clients_log, "SUBSCRIBED", clients, 120)
        time.sleep(0.5)
        cpu0 = procs.cpu_seconds([server_pid])
        writer = _node(
            "writer.js", {"OPS": str(ops), "MODE": mode, "RATE": str(rate), "WURL": url}, writer_log
        )
        line = _wait_for(clients_log, "RESULT", clients, 120)
        cpu = procs.cpu_seconds([server_pid]) - cpu0
    finally:
        _stop(clients)
        if writer is not None:
            _stop(writer)
    result = json.loads(line.removeprefix("RESULT "))
    if result["missingDeliveries"] or result["reason"] != "all-delivered":
        raise BenchError(f"sharedb N={n} {mode}: {result['missingDeliveries']} missing ({result['reason']})")
    deliveries = result["deliveries"]
    latency = result["latMs"]
    return {
        "name": "closed W=1" if mode == "closed" else f"{rate}/s",
        "kind": mode,
        "rate": rate if mode == "rate" else None,
        "window": 1 if mode == "closed" else None,
        "subscribers": n,
        "updates": ops,
        "deliveries": deliveries,
        "missed": result["missingDeliveries"],
        "duplicated": None,  # the ShareDB client drops duplicates silently; not observable here
        "deliveriesPerS": result["deliveriesPerS"],
        "latencyMs": {
            "p50": latency["p50"],
            "p90": latency["p90"],
            "p99": latency["p99"],
            "max": latency["max"],
        },
        "serverCpuS": round(cpu, 3),
        "cpuMsPer1k": round(cpu * 1e6 / deliveries, 2),
    }


def run_sharedb(
    n: int, closed_deliveries: int, rate_seconds: float, rates: tuple[int, ...], workdir: Path
) -> dict[str, Any]:
    npm_install(prepare_peer())
    workdir.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    server_log = workdir / f"sharedb-server-{n}.log"
    server = _node("server.js", {"PORT": str(port), "PUBSUB": "memory"}, server_log)
    try:
        _wait_for(server_log, "READY", server, 30)
        # ShareDB's closed loop carries one op at a time: about 35 ops/s at N=1000 on this box.
        closed_ops = max(10, closed_deliveries // n // 2)
        run_phase(
            port, server.pid, n, max(5, closed_ops // 10), "closed", 0, workdir
        )  # warm-up, not reported
        phases = [run_phase(port, server.pid, n, closed_ops, "closed", 0, workdir)]
        for rate in rates:
            phases.append(
                run_phase(port, server.pid, n, max(5, int(rate * rate_seconds)), "rate", rate, workdir)
            )
    finally:
        _stop(server)
    return {"design": "sharedb", "subscribers": n, "phases": phases}
