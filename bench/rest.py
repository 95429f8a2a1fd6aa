"""REST write scenarios: writes/s and latency of 1 KiB document updates, with their baselines.

- the sync server, ``--workers 1`` and ``2``: unconditional writes over 1000 documents, If-Match
  writes over 1000 fresh documents, and unconditional writes to one hot document;
- the bare Starlette endpoint (``baselines/bare_starlette.py``), same workers: the HTTP layer's ceiling,
  running beside the server, their runs alternating (see :func:`run_workers`);
- ``redis-benchmark`` running the server's own ``doc_write`` script by EVALSHA with the same
  arguments a REST write passes: the store's ceiling.

Load comes from ``wrk`` (``wrk/write.lua``) with 64 connections, or ``loadgen.py`` without wrk.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from redis import Redis

from bench import procs
from bench.fleet_process import BenchError
from sync_server.embedded import RedisProcess
from sync_server.store import keys
from sync_server.store.redis_store import default_service_sid
from sync_server.store.scripts import load_scripts
from sync_server.validation import MAX_DATA_BYTES

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "write.lua"


@dataclass(frozen=True)
class RestPlan:
    seconds: float
    connections: int = 64
    documents: int = 1000
    workers: tuple[int, ...] = (1, 2)
    redis_requests: int = 300_000
    rounds: int = 2
    """Rounds of the unconditional and hot-document runs, alternating with the bare endpoint's."""


def document_data() -> bytes:
    """A 1 KiB JSON object of mixed types, compact, as the server stores it."""
    items = [{"id": i, "label": f"item-{i:03d}", "done": i % 3 == 0, "score": i * 1.5} for i in range(14)]
    data: dict[str, Any] = {"title": "benchmark document", "owner": "bench", "items": items}
    encoded = json.dumps(data, separators=(",", ":"))
    data["pad"] = "x" * max(0, 1024 - len(encoded) - 9)
    return json.dumps(data, separators=(",", ":")).encode()


def write_body(workdir: Path) -> Path:
    path = workdir / "rest-body.txt"
    path.write_text("Data=" + quote(document_data().decode(), safe=""))
    return path


def auth_b64() -> str:
    return base64.b64encode(f"{procs.ACCOUNT_SID}:{procs.AUTH_TOKEN}".encode()).decode()


def create_documents(port: int, prefix: str, count: int) -> None:
    """``count`` documents named PREFIX + 12 digits (revision 0), over a few keep-alive connections."""
    body_data = quote(document_data().decode(), safe="")
    headers = {"Authorization": "Basic " + auth_b64(), "Content-Type": "application/x-www-form-urlencoded"}

    def create(part: range) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in part:
            conn.request(
                "POST",
                "/v1/Services/default/Documents",
                f"UniqueName={prefix}{n:012d}&Data={body_data}",
                headers,
            )
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise BenchError(f"creating {prefix}{n:012d}: HTTP {response.status}")
        conn.close()

    lanes = 8
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(create, [range(i, count, lanes) for i in range(lanes)]))


def generator() -> str:
    """``wrk`` when installed, else ``loadgen.py``; BENCH_LOADGEN=python forces the fallback."""
    if os.environ.get("BENCH_LOADGEN") == "python":
        return "python"
    return "wrk" if shutil.which("wrk") else "python"


def load(
    port: int,
    mode: str,
    prefix: str,
    count: int,
    plan: RestPlan,
    workdir: Path,
    service: str = "default",
) -> dict[str, Any]:
    """One load run; returns writes/s and latency in ms. Any non-2xx or socket error is an error."""
    body = workdir / "rest-body.txt"
    if generator() == "wrk":
        command = [
            "wrk",
            "-t1",
            f"-c{plan.connections}",
            f"-d{max(1, round(plan.seconds))}s",
            "-s",
            str(WRK_SCRIPT),
        ]
        command += [f"http://127.0.0.1:{port}", "--", mode, prefix, str(count), auth_b64(), str(body), "1"]
        command.append(service)
    else:
        command = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--mode", mode]
        command += ["--prefix", prefix, "--count", str(count), "--auth", auth_b64(), "--body", str(body)]
        command += ["--connections", str(plan.connections), "--seconds", str(plan.seconds)]
        command += ["--service", service]
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=plan.seconds + 60, check=False, cwd=procs.ROOT
    )
    line = next((x for x in output.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise BenchError(f"load generator failed: {output.stdout[-500:]} {output.stderr[-500:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    if raw["non_2xx"] or raw["socket_errors"] or raw["bad"] or raw["timeouts"]:
        raise BenchError(f"REST {mode} {prefix}: errors in load run: {raw}")
    return {
        "mode": mode,
        "documents": count,
        "writes_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6)),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "starved": raw["starved"],
    }


def _mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per mode from its rounds: the means, and each round's writes/s kept beside them."""
    first = runs[0]
    merged = {**first, "rounds": [run["writes_per_s"] for run in runs]}
    for field in ("writes_per_s", "p50_ms", "p99_ms", "max_ms"):
        merged[field] = round(statistics.mean(run[field] for run in runs), 3)
    merged["writes_per_s"] = round(merged["writes_per_s"])
    merged["requests"] = sum(run["requests"] for run in runs)
    merged["starved"] = sum(run["starved"] for run in runs)
    return merged


def run_workers(
    redis: RedisProcess, workers: int, plan: RestPlan, workdir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sync server and the bare endpoint with ``workers`` each, both running throughout, their
    load runs alternating (server, bare, server's hot document; ``plan.rounds`` times, then If-Match
    once): whatever else the machine does meanwhile falls on both alike, where runs one after the
    other a minute apart gave ratios that moved by a fifth from one invocation to the next."""
    server = procs.SyncServer(workdir / f"rest-w{workers}", redis.url, workers=workers).start()
    bare = procs.bare_starlette(workdir / f"bare-w{workers}", workers).start()
    try:
        # One fresh set of documents per run: If-Match runs start from the known revision 0.
        create_documents(server.port, f"u{workers}x", plan.documents)
        create_documents(server.port, f"c{workers}x", plan.documents)
        create_documents(server.port, f"h{workers}x", 1)
        # The creates warm the server up; a short run does the same for the bare endpoint.
        load(bare.port, "set", "b", plan.documents, RestPlan(seconds=min(2.0, plan.seconds)), workdir)
        found: dict[str, list[dict[str, Any]]] = {"set": [], "bare": [], "hot": []}
        for _ in range(plan.rounds):
            found["set"].append(load(server.port, "set", f"u{workers}x", plan.documents, plan, workdir))
            found["bare"].append(load(bare.port, "set", "b", plan.documents, plan, workdir))
            found["hot"].append({**load(server.port, "set", f"h{workers}x", 1, plan, workdir), "mode": "hot"})
        ifmatch = load(server.port, "ifmatch", f"c{workers}x", plan.documents, plan, workdir)
    finally:
        server.stop()
        bare.stop()
    runs = [_mean_of(found["set"]), ifmatch, _mean_of(found["hot"])]
    return {"workers": workers, "runs": runs}, {"workers": workers, **_mean_of(found["bare"])}


def run_redis_benchmark(redis: RedisProcess, prefix: str, plan: RestPlan) -> dict[str, Any]:
    """``doc_write`` by EVALSHA with a REST update's arguments, 64 clients, on one document.

    One document, not the REST runs' rotation: a script's KEYS name its partition (store/keys.py), and
    redis-benchmark can substitute a random number into arguments but cannot give each random name the
    keys of its own partition. The store's ceiling for one document is what this baseline stands for.
    """
    if shutil.which("redis-benchmark") is None:
        return {"skipped": "redis-benchmark is not installed (apt-get install redis-tools)"}
    assert redis.port is not None
    script = load_scripts()["doc_write"]
    service = default_service_sid(procs.ACCOUNT_SID)
    client = Redis(host="127.0.0.1", port=redis.port)
    client.script_load(script.source)
    name = f"{prefix}{0:012d}"  # created by the REST runs
    partition = keys.name_partition(service, name)
    raw_sid = client.hget(keys.names(partition, service), name)
    if raw_sid is None:
        raise BenchError(f"redis-benchmark: the document {name} is missing")
    sid = raw_sid.decode()
    script_keys = keys.document_script_keys(partition, service, sid)
    before = int(client.hget(keys.document_key(service, sid), "r") or 0)
    command = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-c", str(plan.connections)]
    command += ["-n", str(plan.redis_requests), "--csv"]
    command += ["EVALSHA", script.sha, str(len(script_keys)), *script_keys]
    # The prelude's header (prefix, service, publish command, no alias following), the principal
    # (unrestricted, REST's system identity, no endpoint), then the document's arguments.
    command += [keys.prefix(partition), service, "PUBLISH", "0", "", "system", ""]
    command += [sid, "1", document_data().decode(), "set", "", "", str(MAX_DATA_BYTES)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    written = int(client.hget(keys.document_key(service, sid), "r") or 0) - before
    client.close()
    rows = [line for line in output.stdout.splitlines() if line.startswith('"EVALSHA')]
    if not rows or written != plan.redis_requests:
        raise BenchError(
            f"redis-benchmark: {written} of {plan.redis_requests} writes landed: {output.stdout[-300:]}"
        )
    # The test name (the whole command) holds commas: the numbers are the last seven fields,
    # rps, avg, min, p50, p95, p99, max.
    fields = [value.strip('"') for value in rows[-1].split(",")][-7:]
    return {"writes_per_s": round(float(fields[0])), "p50_ms": float(fields[3]), "p99_ms": float(fields[5])}


def run_rest(redis: RedisProcess, plan: RestPlan, workdir: Path) -> dict[str, Any]:
    write_body(workdir)
    pairs = [run_workers(redis, workers, plan, workdir) for workers in plan.workers]
    servers = [server for server, _ in pairs]
    bare = [bare for _, bare in pairs]
    store = run_redis_benchmark(redis, f"u{plan.workers[0]}x", plan)
    return {
        "generator": generator(),
        "connections": plan.connections,
        "server": servers,
        "bare_starlette": bare,
        "redis": store,
    }
