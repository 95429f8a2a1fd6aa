"""The ``sync-server`` command, run as a real process (``python -m sync_server``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shlex
import socket
import subprocess
from pathlib import Path

import httpx

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
    for flag in ("--host", "--port", "--redis-url", "--data-dir", "--public-url", "--workers", "--log-level"):
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


def test_missing_redis_binary(tmp_path: Path) -> None:
    env = subprocess_env({"SYNC_REDIS_SERVER": str(tmp_path / "no-redis-here")})
    result = run_cli("--port", str(free_port()), "--data-dir", str(tmp_path), env=env)
    assert_clean_failure(result, 1, "SYNC_REDIS_SERVER")


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
        redis_pids = [pid for pid, name in child_pids(server.pid).items() if name in REDIS_NAMES]
        assert len(redis_pids) == 1
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
