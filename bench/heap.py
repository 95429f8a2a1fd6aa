"""Where an idle subscriber's memory goes: ``.venv/bin/python -m bench.heap [N]`` (default 1000).

Runs the sync server in this process (in a thread, on uvloop, with the websocket settings of
``sync-server``) under ``tracemalloc``, lets the Node fleet connect ``N`` clients that each subscribe to
one document, and prints the traced heap growth per subscriber, by source file and by line. Its own
Redis on a free port, as ``bench/run``; ``BENCH_HEAP_FRAMES=8`` shows who made each allocation. The
figures are Python heap only (RSS adds the allocator's slack); allocations made by uvloop's C code are
charged to the Python line that ran the loop.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import uvicorn
import uvloop

from bench import procs
from bench.fleet_process import Fleet, ws_url
from sync_server.config import Limits
from sync_server.gateway import WEBSOCKET_PROTOCOL
from sync_server.http_protocol import LimitedHttpToolsProtocol

SETTLE = 2.0


def serve(port: int, redis_url: str) -> uvicorn.Server:
    os.environ.update(procs.CREDENTIALS)
    os.environ.update({"SYNC_REDIS_URL": redis_url, "SYNC_HOST": "127.0.0.1", "SYNC_PORT": str(port)})
    limits = Limits()
    config = uvicorn.Config(
        "sync_server.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        loop="none",
        http=functools.partial(LimitedHttpToolsProtocol, limits=limits),  # type: ignore[arg-type]
        ws=WEBSOCKET_PROTOCOL,
        ws_max_size=limits.max_frame_bytes,
        ws_ping_interval=limits.ping_interval,
        ws_ping_timeout=limits.ping_interval,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=uvloop.run, args=(server.serve(),), daemon=True).start()
    return server


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    procs.raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="sync-heap-"))
    redis = procs.start_redis(workdir)
    port = procs.free_port()
    server = serve(port, redis.url)
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        tracemalloc.start(int(os.environ.get("BENCH_HEAP_FRAMES", "1")))
        before = tracemalloc.take_snapshot()
        config = {"mode": "idle", "url": ws_url(port), "doc": f"heap-{n}", "n": n, "connectConcurrency": 256}
        fleet = Fleet(config, workdir).start()
        try:
            ready = fleet.expect("READY", 300)
            time.sleep(SETTLE)
            after = tracemalloc.take_snapshot()
            # What is left once the cycle collector has run (uvicorn's HTTP protocol of each upgraded
            # connection is a reference cycle: garbage that waits for a full collection).
            gc.collect()
            live = tracemalloc.take_snapshot()
        finally:
            fleet.terminate()
            fleet.stop()
        tracemalloc.stop()
    finally:
        server.should_exit = True
        time.sleep(0.5)
        redis.stop()
    report(before, after, live, n, ready["connectMs"] / 1000)
    return 0


def report(
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    live: tracemalloc.Snapshot,
    n: int,
    connect_s: float,
) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after, live = (snapshot.filter_traces(ignore) for snapshot in (before, after, live))
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    by_file = live.compare_to(before, "filename")
    kept = sum(stat.size_diff for stat in by_file)
    print(f"{n:,} idle subscribers (connected in {connect_s:.1f} s, under tracemalloc):")
    per = f"+{grown / n / 1024:.2f} KiB per subscriber, {kept / n / 1024:.2f} KiB after gc.collect()"
    print(f"  traced heap {per}")
    print("\nafter gc.collect(), by file (bytes per subscriber):")
    for stat in by_file[:16]:
        if stat.size_diff / n >= 8:
            print(f"  {stat.size_diff / n:8.0f}  {_short(stat.traceback[0].filename)}")
    print("\nby line (bytes per subscriber):")
    key = "traceback" if len(live.traces) and len(live.traces[0].traceback) > 1 else "lineno"
    for stat in live.compare_to(before, key)[:24]:
        if stat.size_diff / n >= 8:
            frames = " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(stat.traceback))
            print(f"  {stat.size_diff / n:8.0f}  {frames}")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    root = str(procs.ROOT) + "/"
    return filename.removeprefix(root)


if __name__ == "__main__":
    sys.exit(main())
