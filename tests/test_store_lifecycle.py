"""RedisStore.close() releases every connection the store opened, as Redis itself counts them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from sync_server.principal import Principal
from sync_server.store.redis_store import RedisStore
from tests.support.processes import TEST_ACCOUNT_SID, RedisProcess, start_redis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path_factory.mktemp("lifecycle-redis"))
    yield proc
    proc.stop()


async def test_close_releases_every_connection(own_redis: RedisProcess) -> None:
    observer = Redis.from_url(own_redis.url)
    try:
        baseline = len(await observer.client_list())
        store = RedisStore(Redis.from_url(own_redis.url), TEST_ACCOUNT_SID)
        # A script call (the multiplexed connection) and a plain command (redis-py's pool).
        service = await store.create_service({})
        await store.create_document(Principal.system(service.sid), "x", b"{}", 0)
        await store.fetch_service(service.sid)
        assert len(await observer.client_list()) > baseline
        await store.close()
        for _ in range(100):  # Redis notices a closed socket on its next event-loop turn
            if len(await observer.client_list()) == baseline:
                break
            await asyncio.sleep(0.01)
        assert len(await observer.client_list()) == baseline
    finally:
        await observer.aclose()
