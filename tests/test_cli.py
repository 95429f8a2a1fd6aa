"""The ``sync-server`` command, run as a real process (``python -m sync_server``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from sync_server.embedded import bundled_redis_server
from sync_server.embedded_record import identify
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
    child_pids,
    free_port,
    process_gone,
    run_cli,
    subprocess_env,
)

REDIS_NAMES = ("redis-server", "valkey-server")


def assert_clean_failure(result: subprocess.CompletedProcess[str], status: int, message: str) -> None:
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_help() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout and "token" in top.stdout and "credentials" in top.stdout
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    flags = ("--host", "--port", "--redis-url", "--redis-server", "--data-dir", "--public-url", "--workers")
    for flag in (*flags, "--log-level"):
        assert flag in serve.stdout


def test_bad_flag_exits_2_without_traceback() -> None:
    assert_clean_failure(run_cli("--no-such-flag"), 2, "unrecognized arguments: --no-such-flag")
    assert_clean_failure(run_cli("serve", "--port", "http"), 2, "not a TCP port")
    assert_clean_failure(run_cli("--redis-url", "localhost:6379"), 2, "expected a redis://")
    assert_clean_failure(run_cli(env=subprocess_env({"SYNC_WORKERS": "0"})), 2, "--workers")
    assert_clean_failure(run_cli("token"), 2, "--identity")
    too_long = run_cli("token", "--identity", "alice", "--ttl", "86401")
    assert_clean_failure(too_long, 2, "argument --ttl: at most 86400 seconds (24 h, as Twilio): '86401'")


def test_token_prints_one_jwt(tmp_path: Path) -> None:
    result = run_cli("token", "--identity", "alice", "--ttl", "86400", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    header, payload, signature = result.stdout.strip().split(".")
    expected = hmac.new(TEST_API_KEY_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert b64decode(signature) == expected
    claims = json.loads(b64decode(payload))
    assert (claims["iss"], claims["sub"]) == (TEST_API_KEY_SID, TEST_ACCOUNT_SID)
    assert claims["grants"] == {"identity": "alice", "data_sync": {"service_sid": "default"}}
    assert claims["exp"] - claims["nbf"] == 86400  # Twilio's maximum lifetime is allowed
    assert not (tmp_path / "credentials.json").exists()  # the environment supplied everything


def test_credentials_command_matches_the_file(tmp_path: Path) -> None:
    env = subprocess_env(credentials=False)
    result = run_cli("credentials", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split("=", 1) for line in shlex.split(result.stdout))
    stored = json.loads((tmp_path / "credentials.json").read_text())
    assert printed == {f"SYNC_{name.upper()}": value for name, value in stored.items()}
    as_json = run_cli("credentials", "--json", "--data-dir", str(tmp_path), env=env)
    assert json.loads(as_json.stdout) == stored


def test_credentials_readable_by_others_are_used_with_one_warning(tmp_path: Path) -> None:
    env = subprocess_env(credentials=False)
    assert run_cli("credentials", "--data-dir", str(tmp_path), env=env).stderr == ""  # created 0600
    path = tmp_path / "credentials.json"
    path.chmod(0o644)
    result = run_cli("credentials", "--json", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(path.read_text())
    assert result.stderr == (
        f"sync-server: warning: {path} holds secrets but other users may access it (mode 0644); "
        f"run: chmod 600 {path}\n"
    )
    path.chmod(0o600)
    assert run_cli("token", "--identity", "a", "--data-dir", str(tmp_path), env=env).stderr == ""


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("--port", port, "--redis-url", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path))
    assert_clean_failure(result, 1, f"cannot listen on 127.0.0.1:{port}")


def test_migrate_names_a_redis_it_cannot_reach_without_its_password() -> None:
    result = run_cli("migrate", "--redis-url", f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    assert_clean_failure(result, 1, "migrate: Redis at 127.0.0.1:")
    assert "hunter2" not in result.stderr


def test_missing_redis_binary(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-redis-here")
    expected = (
        f"the configured Redis server {missing!r} (--redis-server or SYNC_REDIS_SERVER) is not an executable"
    )
    env = subprocess_env({"SYNC_REDIS_SERVER": missing})
    assert_clean_failure(
        run_cli("--port", str(free_port()), "--data-dir", str(tmp_path), env=env), 1, expected
    )
    flag = run_cli("--port", str(free_port()), "--data-dir", str(tmp_path), "--redis-server", missing)
    assert_clean_failure(flag, 1, expected)
    assert not (tmp_path / "redis").exists()


def test_bad_credentials_in_env(tmp_path: Path) -> None:
    env = subprocess_env({"SYNC_ACCOUNT_SID": "ACnope"})
    result = run_cli("credentials", "--data-dir", str(tmp_path), env=env)
    assert_clean_failure(result, 1, "invalid account SID 'ACnope'")


def test_secrets_from_env_are_never_printed(tmp_path: Path) -> None:
    # Redis is unreachable here, which is fine: startup output is what is checked.
    server = ServerProcess(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", require_healthy=False)
    with server:
        pass
    output = server.log_path.read_text()
    assert TEST_AUTH_TOKEN not in output
    assert TEST_API_KEY_SECRET not in output


def test_embedded_redis_lives_and_dies_with_the_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, redis_url=None, credentials=False)
    with server:
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        assert server.pid is not None
        redis_children = {pid: name for pid, name in child_pids(server.pid).items() if name in REDIS_NAMES}
        # The bundled server, even where a redis-server is on PATH: the embedded mode never picks one up.
        assert list(redis_children.values()) == ["valkey-server"]
        redis_pids = list(redis_children)
        assert (server.data_dir / "redis" / "redis.sock").exists()
        assert server.stop() == 0
    # The server waits for its Redis to exit before it does itself, so there is no need to poll.
    assert process_gone(redis_pids[0])
    assert "ready to exit" in (server.data_dir / "redis" / "redis.log").read_text()
    stored = json.loads((server.data_dir / "credentials.json").read_text())
    output = server.log_path.read_text()
    assert stored["account_sid"] in output and stored["auth_token"] in output
    assert stored["api_key_secret"] in output

    server.start()  # the same data dir: same credentials, Redis comes back on its socket
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    server.stop()
    assert json.loads((server.data_dir / "credentials.json").read_text()) == stored


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its content and modification time."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_embedded_data_is_never_handed_to_a_server_that_cannot_read_it(tmp_path: Path) -> None:
    """The bundled Valkey writes the data; a system redis-server configured later is refused with one
    clear line and the data untouched; the default then serves the document again."""
    system_redis = shutil.which("redis-server")
    if system_redis is None:
        pytest.skip("no redis-server on PATH")
    bundled = bundled_redis_server()
    assert bundled is not None
    valkey, other = identify(bundled), identify(system_redis)
    server = ServerProcess(tmp_path, redis_url=None)
    redis_dir = server.data_dir / "redis"
    document = f"{server.base_url}/v1/Services/default/Documents/kept"
    with server:
        created = httpx.post(
            document.rsplit("/", 1)[0], data={"UniqueName": "kept", "Data": '{"v": 1}'}, auth=server.auth
        )
        assert created.status_code == 201, created.text
    assert f"Embedded Redis server: {valkey}, data in {redis_dir}" in server.log_path.read_text()
    record = json.loads((redis_dir / "server.json").read_text())
    assert record == {"name": "valkey", "version": valkey.version, "path": bundled}
    before = snapshot(redis_dir)

    refused = (
        f"sync-server: error: the data in {redis_dir} was written by {valkey}; the configured server, "
        f"{other}, is another server family and may not read it. Unset SYNC_REDIS_SERVER (and drop "
        "--redis-server) to use the bundled server again, or move the data to the new server yourself "
        f"(nothing converts it); if you know that it can read the data, delete {redis_dir / 'server.json'}\n"
    )
    common = ("--port", str(free_port()), "--data-dir", str(server.data_dir))
    by_env = run_cli(*common, env=subprocess_env({"SYNC_REDIS_SERVER": "redis-server"}))
    by_flag = run_cli(*common, "--redis-server", system_redis)
    for result in (by_env, by_flag):
        assert (result.returncode, result.stderr, result.stdout) == (1, refused, "")
    assert snapshot(redis_dir) == before

    with server:  # the default again: the bundled server, and the document is still there
        fetched = httpx.get(document, auth=server.auth)
        assert (fetched.status_code, fetched.json()["data"]) == (200, {"v": 1})
    assert json.loads((redis_dir / "server.json").read_text()) == record
