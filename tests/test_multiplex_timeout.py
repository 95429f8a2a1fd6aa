"""Every command on the multiplexed connection has a timeout: a hung Redis (SIGSTOP) fails the commands
waiting on it within that time instead of hanging them, and once it runs again (SIGCONT) the next
command reconnects and works. Through the app, a REST write then answers 503 (Twilio code 20503)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.store.multiplex import CannotConnectError, ConnectionLostError, MultiplexedRedis
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    TEST_CREDENTIALS_ENV,
    RedisProcess,
    start_redis,
)

TIMEOUT = 0.5
MARGIN = 0.4
"""Seconds a failure may come after the timeout (a loaded two-core box)."""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path / "redis")  # TCP: a stopped server still accepts connections (backlog)
    yield proc
    if proc.pid is not None:
        os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def stop(proc: RedisProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGSTOP)


def resume(proc: RedisProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGCONT)


async def test_a_hung_redis_fails_the_command_within_the_timeout_then_recovers(
    own_redis: RedisProcess,
) -> None:
    connection = MultiplexedRedis({"host": "127.0.0.1", "port": own_redis.port}, timeout=TIMEOUT)
    try:
        assert await connection.execute("SET", "t:key", "1") == b"OK"
        stop(own_redis)
        began = time.monotonic()
        with pytest.raises(RedisTimeoutError, match=r"did not answer within 0.5s"):
            await connection.execute("INCR", "t:key")
        elapsed = time.monotonic() - began
        assert TIMEOUT - 0.05 <= elapsed <= TIMEOUT + MARGIN
        resume(own_redis)
        # A new connection: the INCR's late reply went down with the old one, so no answer is taken
        # for another command's. Whether the INCR ran is what a timeout leaves open.
        assert await connection.execute("GET", "t:key") in (b"1", b"2")
        assert await connection.execute("PING") == b"PONG"
    finally:
        await connection.aclose()


async def test_every_command_waiting_fails_when_the_oldest_times_out(own_redis: RedisProcess) -> None:
    connection = MultiplexedRedis({"host": "127.0.0.1", "port": own_redis.port}, timeout=TIMEOUT)
    try:
        assert await connection.execute("PING") == b"PONG"
        stop(own_redis)
        began = time.monotonic()
        first = asyncio.ensure_future(connection.execute("INCR", "t:many"))
        await asyncio.sleep(0.2)
        later = [asyncio.ensure_future(connection.execute("INCR", "t:many")) for _ in range(20)]
        outcomes = await asyncio.gather(first, *later, return_exceptions=True)
        elapsed = time.monotonic() - began
        assert isinstance(outcomes[0], RedisTimeoutError)
        # The later ones were on the same connection: lost with it (they may have run, like the first).
        assert [type(o) for o in outcomes[1:]] == [ConnectionLostError] * 20
        assert elapsed <= TIMEOUT + MARGIN
        resume(own_redis)
        # Fresh connection, right reply: the 21 INCRs sent before may or may not have run.
        assert 1 <= await connection.execute("INCR", "t:many") <= 22
    finally:
        await connection.aclose()


async def test_a_new_connection_to_a_hung_redis_times_out_too(own_redis: RedisProcess) -> None:
    stop(own_redis)
    connection = MultiplexedRedis({"host": "127.0.0.1", "port": own_redis.port}, timeout=TIMEOUT)
    try:
        began = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await connection.execute("PING")
        assert time.monotonic() - began <= TIMEOUT + MARGIN
        resume(own_redis)
        assert await connection.execute("PING") == b"PONG"
    finally:
        await connection.aclose()


async def test_rest_write_to_a_hung_redis_answers_503_within_the_timeout(
    own_redis: RedisProcess, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=own_redis.url,
        data_dir=tmp_path / "data",
        account_sid=TEST_ACCOUNT_SID,
        auth_token=TEST_AUTH_TOKEN,
        api_key_sid=TEST_API_KEY_SID,
        api_key_secret=TEST_API_KEY_SECRET,
        redis_timeout=TIMEOUT,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    auth = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", auth=auth) as http:
            created = await http.post("/v1/Services/default/Documents", data={"UniqueName": "hung"})
            assert created.status_code == 201, created.text
            stop(own_redis)
            began = time.monotonic()
            response = await http.post("/v1/Services/default/Documents/hung", data={"Data": '{"a":1}'})
            elapsed = time.monotonic() - began
            assert response.status_code == 503
            assert response.json()["code"] == 20503
            assert elapsed <= TIMEOUT + MARGIN
            # The routes on redis-py's client (a service read, /healthz's INFO) time out the same way.
            for path, code in (("/v1/Services/default", 20503), ("/healthz", None)):
                began = time.monotonic()
                response = await http.get(path)
                assert response.status_code == 503, (path, response.text)
                assert code is None or response.json()["code"] == code
                assert time.monotonic() - began <= TIMEOUT + MARGIN, path
            resume(own_redis)
            response = await http.post("/v1/Services/default/Documents/hung", data={"Data": '{"a":2}'})
            assert response.status_code == 200, response.text
            assert response.json()["data"] == {"a": 2}
    finally:
        resume(own_redis)
        await app.state.store.close()


def test_the_timeout_setting_comes_from_sync_redis_timeout() -> None:
    assert Settings.from_env(TEST_CREDENTIALS_ENV).redis_timeout == 5.0
    assert Settings.from_env({**TEST_CREDENTIALS_ENV, "SYNC_REDIS_TIMEOUT": "0.25"}).redis_timeout == 0.25
    assert Settings.from_env({**TEST_CREDENTIALS_ENV, "SYNC_REDIS_TIMEOUT": "0"}).redis_timeout is None


def node_sample(name: str, node: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"node": node, **labels})
    return value or 0.0


async def test_connects_and_failures_are_counted_per_node(own_redis: RedisProcess) -> None:
    node = f"127.0.0.1:{own_redis.port}"
    errors = "sync_redis_connection_errors_total"

    def counts() -> tuple[float, ...]:
        return (
            node_sample("sync_redis_connects_total", node),
            node_sample(errors, node, kind="timeout"),
            node_sample(errors, node, kind="lost"),
            node_sample(errors, node, kind="connect"),
        )

    before = counts()
    connection = MultiplexedRedis({"host": "127.0.0.1", "port": own_redis.port}, timeout=TIMEOUT)
    try:
        assert await connection.execute("PING") == b"PONG"
        stop(own_redis)
        with pytest.raises(RedisTimeoutError):
            await connection.execute("PING")
        resume(own_redis)
        assert await connection.execute("PING") == b"PONG"  # reconnected
        # Redis drops the connection (as a restart or CLIENT KILL would): lost, then a reconnect.
        killer = MultiplexedRedis({"host": "127.0.0.1", "port": own_redis.port})
        try:
            await killer.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        finally:
            await killer.aclose()
        await asyncio.sleep(0.1)
        assert await connection.execute("PING") == b"PONG"
    finally:
        await connection.aclose()
    own_redis.stop()
    dead = MultiplexedRedis({"host": "127.0.0.1", "port": own_redis.port})
    with pytest.raises(CannotConnectError):
        await dead.execute("PING")
    after = counts()
    # connects: this one's three and the killer's; a timeout, counted once (not also as lost);
    # one loss; one refused connect. Closing on purpose counts nothing.
    assert [a - b for a, b in zip(after, before, strict=True)] == [4, 1, 1, 1]
