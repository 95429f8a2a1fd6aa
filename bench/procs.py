"""The processes a benchmark run starts: its own Redis, the sync server, the baseline servers, and
readers of their CPU time and RSS from ``/proc``.

Everything listens on 127.0.0.1 on ports chosen free at start; nothing here touches a Redis it did
not start. Every child gets its own session, so :meth:`Managed.stop` can end it and any workers it
forked by its process-group id.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sync_server.embedded import EPHEMERAL_ARGS, RedisProcess

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-auth-token-" + "0" * 15
API_KEY_SID = "SK" + "b1" * 16
API_KEY_SECRET = "bench-api-key-secret-" + "1" * 11
CREDENTIALS = {
    "SYNC_ACCOUNT_SID": ACCOUNT_SID,
    "SYNC_AUTH_TOKEN": AUTH_TOKEN,
    "SYNC_API_KEY_SID": API_KEY_SID,
    "SYNC_API_KEY_SECRET": API_KEY_SECRET,
}
# The fleet's writer sends hundreds of commands per second on one connection; the default per-connection
# limit (200/s) is a protection for real deployments, not something a benchmark should measure.
SERVER_TUNING = {"SYNC_MAX_COMMANDS_PER_SECOND": "1000000"}
# SYNC_METRICS=off on the bench's own command line reaches the servers (counting off, to compare).
if "SYNC_METRICS" in os.environ:
    SERVER_TUNING["SYNC_METRICS"] = os.environ["SYNC_METRICS"]


FLEET_IDENTITY = "bench-fleet"


def rest_call(port: int, method: str, path: str, form: Mapping[str, str]) -> dict[str, Any]:
    """One REST request to a sync server with the bench account's credentials."""
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    raw = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    request.add_header("Authorization", "Basic " + raw)
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        result: dict[str, Any] = json.loads(response.read() or b"{}")
        return result


def restricted_fleet(port: int, doc: str) -> str:
    """Turns access control on for the default service, creates ``doc`` with read and write granted
    to the fleet's identity, and returns an access token for that identity."""
    from sync_server.tokens import mint_access_token

    rest_call(port, "POST", "/v1/Services/default", {"AclEnabled": "true"})
    rest_call(port, "POST", "/v1/Services/default/Documents", {"UniqueName": doc, "Data": '{"s":0,"t":0}'})
    rights = {"Read": "true", "Write": "true", "Manage": "false"}
    rest_call(port, "POST", f"/v1/Services/default/Documents/{doc}/Permissions/{FLEET_IDENTITY}", rights)
    return mint_access_token(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, FLEET_IDENTITY, "default", ttl=7200)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


WANTED_FILES = 65_536
"""Open files worth asking for: the many-documents scenario holds ~21,000 connections (its fleet splits
them over shard processes where the limit is lower)."""


def raise_fd_limit() -> int:
    """Raise the open-file limit (inherited by every child): both limits to :data:`WANTED_FILES` where
    the hard one may be raised (root), else the soft one to the hard one; returns the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(hard, WANTED_FILES), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
        except (ValueError, OSError):
            continue
        return target
    return soft


# -- /proc ----------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; state is field 0 here


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (uvicorn workers are children of the supervisor)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat_fields(int(entry.name))
                if fields[0] not in ("Z", "X"):
                    parents[int(entry.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` (processes that have exited count as 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


# -- processes ------------------------------------------------------------------------------------


class Managed:
    """One child process in its own session, output to a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.workdir = workdir
        self.env = dict(env or {})
        self.port = port
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def start(self, ready_timeout: float = 30.0) -> Managed:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(self.env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop(timeout=2)
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited during startup:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:g}s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        if self.port is None:
            return True
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to the whole group after ``timeout`` (and to leftover workers)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class SyncServer(Managed):
    """``python -m sync_server`` on its own port and data directory, against the run's Redis."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        *,
        workers: int = 1,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        port = port or free_port()
        command = [PYTHON, "-m", "sync_server", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--redis-url", redis_url, "--workers", str(workers), "--data-dir", str(workdir / "data")]
        # Access logging costs CPU on every request; production deployments choose their own level.
        command += ["--log-level", "warning"]
        env = {**CREDENTIALS, **SERVER_TUNING, **(env or {})}
        super().__init__(f"sync-w{workers}-{port}", command, workdir, env=env)
        self.port = port
        self.workers = workers

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (with ``--workers 1`` uvicorn serves in the main one)."""
        tree = self.pids()
        return tree if self.workers == 1 else tree[1:]


def bare_starlette(workdir: Path, workers: int) -> Managed:
    port = free_port()
    command = [PYTHON, "-m", "uvicorn", "bench.baselines.bare_starlette:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http", "httptools"]
    command += ["--log-level", "warning", "--no-access-log", "--no-server-header"]
    return Managed(f"bare-starlette-w{workers}", command, workdir, env=CREDENTIALS, port=port)


def ws_broadcast(workdir: Path) -> Managed:
    port = free_port()
    command = [PYTHON, "-m", "bench.baselines.ws_broadcast", "--port", str(port)]
    return Managed("ws-broadcast", command, workdir, env=CREDENTIALS, port=port)


def start_redis(workdir: Path) -> RedisProcess:
    """A throwaway Redis on a free TCP port (redis-benchmark needs TCP)."""
    return RedisProcess(workdir / "redis", args=EPHEMERAL_ARGS, unix_socket=False).start()


def redis_pid(redis: RedisProcess) -> int:
    assert redis.pid is not None
    return redis.pid
