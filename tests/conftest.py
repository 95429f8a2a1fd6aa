"""Shared fixtures: one isolated Redis per test session, the app in-process on it, and a real server.

Tests that only need HTTP semantics drive the app in-process (httpx's ASGI transport) against the
real Redis; tests whose behaviour crosses a process boundary use :class:`ServerProcess`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.store.redis_store import RedisStore
from tests.support.cluster_fixtures import (  # noqa: F401 (fixtures)
    cluster_server,
    healthy_cluster,
    redis_cluster,
)
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    ServerProcess,
    start_redis,
)

AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def settings(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        redis_url=redis_proc.url,
        data_dir=Path(tmp_path_factory.mktemp("data")),
        account_sid=TEST_ACCOUNT_SID,
        auth_token=TEST_AUTH_TOKEN,
        api_key_sid=TEST_API_KEY_SID,
        api_key_secret=TEST_API_KEY_SECRET,
    )


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app in-process, authenticated with the account credentials."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", auth=AUTH) as http:
        yield http
    await app.state.store.close()


@pytest.fixture
async def redis(redis_proc: RedisProcess) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_proc.url)
    yield r
    await r.aclose()


@pytest.fixture
async def store(redis_proc: RedisProcess) -> AsyncIterator[RedisStore]:
    s = RedisStore(Redis.from_url(redis_proc.url), TEST_ACCOUNT_SID)
    yield s
    await s.close()


@pytest.fixture
async def service(client: httpx.AsyncClient) -> str:
    """A fresh service per test, so tests never see each other's documents."""
    response = await client.post("/v1/Services", data={"FriendlyName": "test"})
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


@pytest.fixture(scope="session")
def server(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server process on the session's Redis."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), redis_url=redis_proc.url).start()
    yield proc
    proc.stop()
