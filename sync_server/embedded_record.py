"""Which server wrote an embedded data directory, so that the binary serving it never changes silently.

A Redis-compatible server reads what its own family wrote at its own or an older release; anything else
may fail to load (Redis 7.0 stops at the AOF base Valkey 8 writes: "Can't handle RDB format version 11").
So the CLI's embedded mode keeps ``<data-dir>/redis/server.json`` (``name``, ``version``, ``path`` of the
last server that served the directory, from ``<binary> --version``) and compares the configured binary
with it before starting anything:

- same family, same or newer ``major.minor``: start, then record the new binary (path or version);
- another family, or an older ``major.minor``: :class:`DataDirMismatchError`, one line that says what
  wrote the data and what to do; nothing is started and the data is not touched;
- no record: a fresh directory, or data from before records existed: adopt the binary, start and record it;
  likewise a record without data (nothing left to misread).

Only ``major.minor`` counts: minor releases do change the formats (Redis 7.0, 7.2 and 7.4 write RDB
versions 10, 11 and 12), patch releases do not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sync_server.embedded import (
    REDIS_SERVER_ENV,
    RedisNotFoundError,
    RedisProcess,
    RedisStartError,
    bundled_redis_server,
    embedded_redis_server,
)

__all__ = [
    "RECORD_NAME",
    "DataDirMismatchError",
    "ServerInfo",
    "check_server",
    "embedded_server",
    "identify",
    "read_record",
    "start_recorded",
    "write_record",
]

RECORD_NAME = "server.json"

# "Redis server v=7.0.15 sha=…", "Valkey server v=8.1.8 sha=…": the family is the first word.
_VERSION_LINE = re.compile(r"([A-Za-z][\w-]*)\b.*?\bv=(\d+\.\d+\.\d+)\b")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
# What a Redis-compatible server persists into its --dir.
_DATA_FILES = ("appendonlydir", "appendonly.aof", "dump.rdb")


class DataDirMismatchError(RedisStartError):
    """The configured server may not read the data directory, or its record is unreadable."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A server binary as its ``--version`` describes it: ``name`` is the family, lower case."""

    name: str
    version: str
    path: str

    @property
    def release(self) -> tuple[int, int]:
        major, minor, _ = self.version.split(".")
        return int(major), int(minor)

    def can_read(self, writer: ServerInfo) -> bool:
        """Whether this server may load data that ``writer`` persisted."""
        return self.name == writer.name and self.release >= writer.release

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


def identify(binary: str) -> ServerInfo:
    """Run ``binary --version``; raise :class:`RedisNotFoundError` unless it names a family and version."""
    try:
        result = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisNotFoundError(f"cannot run `{binary} --version`: {exc}") from None
    output = result.stdout.strip()
    match = _VERSION_LINE.match(output)
    if result.returncode != 0 or match is None:
        first_line = output.splitlines()[0] if output else ""
        raise RedisNotFoundError(
            f"{binary} does not look like a Redis-compatible server: `--version` printed {first_line!r}"
        )
    return ServerInfo(name=match[1].lower(), version=match[2], path=binary)


def embedded_server(directory: Path, configured: str | None) -> ServerInfo:
    """The server the embedded mode runs on ``directory``, checked against its record (see the module)."""
    server = identify(embedded_redis_server(configured))
    check_server(directory, server)
    return server


def check_server(directory: Path, server: ServerInfo) -> None:
    """Raise :class:`DataDirMismatchError` if ``server`` may not read the data recorded in ``directory``."""
    recorded = read_record(directory)
    if recorded is None or server.can_read(recorded) or not _has_data(directory):
        return
    why = "another server family" if server.name != recorded.name else "an older release"
    raise DataDirMismatchError(
        f"the data in {directory} was written by {recorded}; the configured server, {server}, is {why} "
        f"and may not read it. {_advice(recorded, server)}, or move the data to the new server yourself "
        f"(nothing converts it); if you know that it can read the data, delete {directory / RECORD_NAME}"
    )


def _advice(recorded: ServerInfo, server: ServerInfo) -> str:
    bundled = bundled_redis_server()
    if bundled is not None and bundled != server.path and _readable_by(bundled, recorded):
        return f"Unset {REDIS_SERVER_ENV} (and drop --redis-server) to use the bundled server again"
    if recorded.path != server.path and _readable_by(recorded.path, recorded):
        return f"Set {REDIS_SERVER_ENV}={shlex.quote(recorded.path)} to keep using it"
    major, minor = recorded.release
    return f"Set {REDIS_SERVER_ENV} to a {recorded.name} {major}.{minor} or newer"


def _readable_by(binary: str, recorded: ServerInfo) -> bool:
    try:
        return identify(binary).can_read(recorded)
    except RedisNotFoundError:
        return False


def start_recorded(process: RedisProcess, server: ServerInfo) -> RedisProcess:
    """Start ``process`` (running ``server``) and record ``server`` as what serves its directory.

    The record is written only once the server answers PING, that is after it has loaded the data.
    """
    directory = process.directory
    unrecorded = read_record(directory) is None and _has_data(directory)
    try:
        process.start()
    except RedisStartError as exc:
        if not unrecorded:
            raise
        raise RedisStartError(
            f"{exc}\nThe data in {directory} has no {RECORD_NAME} saying which server wrote it: if another "
            f"server did, set {REDIS_SERVER_ENV} to that one."
        ) from None
    try:
        if read_record(directory) != server:
            write_record(directory, server)
    except BaseException:
        process.stop()
        raise
    return process


def _has_data(directory: Path) -> bool:
    return any((directory / name).exists() for name in _DATA_FILES)


def read_record(directory: Path) -> ServerInfo | None:
    """The recorded server of ``directory``, or None without a record."""
    path = directory / RECORD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataDirMismatchError(f"cannot read {path}: {exc}") from None
    fields = ("name", "version", "path")
    if (
        not isinstance(data, dict)
        or not all(isinstance(data.get(name), str) and data[name] for name in fields)
        or not _VERSION.fullmatch(data["version"])
    ):
        raise DataDirMismatchError(
            f"{path} must be a JSON object with the string fields {', '.join(fields)} (version as x.y.z)"
        )
    return ServerInfo(**{name: data[name] for name in fields})


def write_record(directory: Path, server: ServerInfo) -> None:
    """Replace the record atomically: a crash leaves the old record or the new one, never half of one."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp_name = tempfile.mkstemp(prefix=".server-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(asdict(server), file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, directory / RECORD_NAME)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
