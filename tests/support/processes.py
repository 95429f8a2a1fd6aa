"""Real processes for tests: an isolated Redis and a real ``python -m sync_server`` server.

Nothing here touches the shared Redis on 6379: every Redis is a fresh child on a free port (or a unix
socket) in a temporary directory, and every server gets its own port, data directory and log file.
Output goes to a log file, not a pipe, so a chatty process never blocks on a full pipe; failures quote
the log's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from sync_server.embedded import EPHEMERAL_ARGS, PERSISTENT_ARGS, RedisProcess

__all__ = [
    "REPO_ROOT",
    "TEST_ACCOUNT_SID",
    "TEST_API_KEY_SECRET",
    "TEST_API_KEY_SID",
    "TEST_AUTH_TOKEN",
    "TEST_CREDENTIALS_ENV",
    "RedisProcess",
    "ServerProcess",
    "child_pids",
    "free_port",
    "log_tail",
    "process_gone",
    "run_cli",
    "start_redis",
    "subprocess_env",
    "wait_gone",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

TEST_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TEST_AUTH_TOKEN = "test-auth-token-" + "a" * 16
TEST_API_KEY_SID = "SK" + "fedcba9876543210" * 2
TEST_API_KEY_SECRET = "test-api-key-secret-" + "b" * 12
TEST_CREDENTIALS_ENV: dict[str, str] = {
    "SYNC_ACCOUNT_SID": TEST_ACCOUNT_SID,
    "SYNC_AUTH_TOKEN": TEST_AUTH_TOKEN,
    "SYNC_API_KEY_SID": TEST_API_KEY_SID,
    "SYNC_API_KEY_SECRET": TEST_API_KEY_SECRET,
}


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (another process may still take it before you bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(directory: Path, *, unix_socket: bool = False, persistent: bool = False) -> RedisProcess:
    """Start a throwaway Redis in ``directory``; it has ``.url``, ``.port``, ``.stop()``, ``.kill()`` and
    ``.restart(kill=False)``, and keeps its address across restarts. Without persistence by default;
    ``persistent`` gives it the embedded mode's AOF, so its data survives a kill and restart."""
    args = PERSISTENT_ARGS if persistent else EPHEMERAL_ARGS
    return RedisProcess(directory, args=args, unix_socket=unix_socket).start()


def subprocess_env(extra: Mapping[str, str] | None = None, *, credentials: bool = True) -> dict[str, str]:
    """The environment for a child ``python -m sync_server``: this one without any ``SYNC_*`` variable
    (so a developer's settings do not leak in), the repository on ``PYTHONPATH``, the test credentials
    unless ``credentials`` is false, then ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SYNC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if credentials:
        env.update(TEST_CREDENTIALS_ENV)
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sync_server *args`` to completion, capturing text stdout and stderr.

    ``env`` is the complete environment (build it with :func:`subprocess_env`).
    """
    return subprocess.run(
        [sys.executable, "-m", "sync_server", *args],
        env=subprocess_env() if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a non-reaping init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return _stat_fields(stat)[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; return whether it did."""
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def child_pids(pid: int) -> dict[int, str]:
    """The live children of ``pid`` (Linux ``/proc``), as ``{pid: command name}``."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = _stat_fields(stat)
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            children[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
    return children


def _stat_fields(stat: str) -> list[str]:
    # The command name in parentheses may contain spaces; the fields after it start with state, ppid.
    return stat.rsplit(")", 1)[1].split()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    """A real server process on 127.0.0.1, started with :meth:`start` (or ``with``).

    ``redis_url=None`` runs the embedded Redis in ``directory/data``. The port is chosen once, so
    :meth:`restart` comes back at the same :attr:`base_url`. With ``workers > 1`` uvicorn forks workers;
    the process gets its own process group so that :meth:`kill` takes them all down.
    """

    def __init__(
        self,
        directory: Path,
        *,
        redis_url: str | None,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        credentials: bool = True,
        port: int | None = None,
        startup_timeout: float = 30.0,
        require_healthy: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.redis_url = redis_url
        self.workers = workers
        self.extra_env = dict(env or {})
        self.args = tuple(args)
        self.credentials = credentials
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.require_healthy = require_healthy
        self.log_path = self.directory / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def auth(self) -> tuple[str, str]:
        """HTTP basic auth for the test account (only meaningful with ``credentials=True``)."""
        return (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "sync_server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        if self.redis_url is not None:
            command += ["--redis-url", self.redis_url]
        return [*command, *self.args]

    def start(self) -> ServerProcess:
        """Launch the server and wait until ``GET /healthz`` answers 200 (any answer when
        ``require_healthy`` is false); on failure kill it and raise with the log's tail."""
        self.directory.mkdir(parents=True, exist_ok=True)
        env = subprocess_env(self.extra_env, credentials=self.credentials)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise RuntimeError(f"server exited with {code} during startup:\n{self.log_tail()}")
                try:
                    status = client.get(f"{self.base_url}/healthz").status_code
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if status == 200 or not self.require_healthy:
                        return
                    last = f"GET /healthz -> {status}"
                time.sleep(0.05)
        raise RuntimeError(f"server not ready within {self.startup_timeout:g}s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL to the group after ``timeout``); returns the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._kill_group(process)  # workers or helpers that outlived the main process
        self.process = None
        return process.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would (the embedded Redis dies with its parent)."""
        process, self.process = self.process, None
        if process is not None:
            self._kill_group(process)
            process.wait()

    def restart(self, *, kill: bool = False) -> ServerProcess:
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is already empty
            os.killpg(process.pid, signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
