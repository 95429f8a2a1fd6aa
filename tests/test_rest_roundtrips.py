"""One Redis round trip per REST document operation: a single EVALSHA, nothing else; a list page
is the one exception, by design: two (the index entries of every partition, then the page's own
documents, so that a page of 50 reads 50 documents instead of the ~320 its merge looks at).

This module has a Redis of its own: the session's Redis also serves the real server process,
whose sweeper would blur the counts. Two views are taken of each operation:

- ``INFO commandstats``: exactly one ``evalsha`` call more, and no ``eval``. Redis 7 also counts
  the commands a script runs inside (HGET, PUBLISH…) there, so commandstats alone cannot show
  that the client sent nothing else;
- ``MONITOR``, which tags the commands run by scripts as ``lua``: the client's own commands during
  the operation must be exactly ``["EVALSHA"]``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from redis.asyncio import Redis

from sync_server import errors
from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.documents import DocumentService
from sync_server.principal import Principal
from sync_server.store.redis_store import RedisStore
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    start_redis,
)

T = TypeVar("T")
SENTINEL = "end-of-operation-marker"
LUA = Path(__file__).resolve().parents[1] / "sync_server" / "store" / "lua"
# What commandstats may also count during an operation: the commands the scripts themselves call.
SCRIPT_COMMANDS = {
    name.lower()
    for script in LUA.glob("*.lua")
    for name in re.findall(r"redis\.call\('(\w+)'", script.read_text())
} | {"publish"}  # the publish command is an argument of the scripts (SPUBLISH on a cluster)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path_factory.mktemp("roundtrip-redis"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def own_client(
    own_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        redis_url=own_redis.url,
        data_dir=Path(tmp_path_factory.mktemp("roundtrip-data")),
        account_sid=TEST_ACCOUNT_SID,
        auth_token=TEST_AUTH_TOKEN,
        api_key_sid=TEST_API_KEY_SID,
        api_key_secret=TEST_API_KEY_SECRET,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    ) as http:
        yield http
    await app.state.store.close()


@dataclass
class Observer:
    redis: Redis
    """Runs MONITOR."""
    marker: Redis
    """Reads commandstats and sends the end marker, on a connection made beforehand (a new
    connection would show its handshake among the counts)."""


@pytest.fixture
async def own_redis_client(own_redis: RedisProcess) -> AsyncIterator[Observer]:
    observer = Observer(
        Redis.from_url(own_redis.url, decode_responses=True),
        Redis.from_url(own_redis.url, decode_responses=True),
    )
    await observer.marker.ping()
    yield observer
    await observer.redis.aclose()
    await observer.marker.aclose()


async def command_calls(redis: Redis) -> dict[str, int]:
    stats: dict[str, Any] = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


async def observe(
    observer: Observer, action: Callable[[], Awaitable[T]]
) -> tuple[T, list[str], dict[str, int]]:
    """Runs ``action``; returns its response, the commands clients sent meanwhile (MONITOR, script
    internals left out) and the change of every commandstats counter. The observer's own INFO and
    ECHO are left out of both; everything else, the MONITOR connection's handshake included,
    happens before the first snapshot."""
    sent: list[str] = []
    async with observer.redis.monitor() as monitor:
        before = await command_calls(observer.marker)
        response = await action()
        after = await command_calls(observer.marker)
        # MONITOR lists commands in execution order, so all the action's commands come before it.
        await observer.marker.echo(SENTINEL)
        while True:
            entry = await asyncio.wait_for(monitor.next_command(), timeout=5)
            command = entry["command"].split(" ", 1)[0].upper()
            if entry["client_type"] == "lua" or command == "INFO":
                continue
            if SENTINEL in entry["command"]:
                break
            sent.append(command)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    changed = {name: n for name, n in delta.items() if n and name != "info"}
    return response, sent, changed


async def test_each_document_operation_is_one_evalsha(
    own_client: httpx.AsyncClient, own_redis_client: Observer
) -> None:
    service = (await own_client.post("/v1/Services")).json()["sid"]
    documents = f"/v1/Services/{service}/Documents"
    # Warm the script cache (and every connection) first: the first use of each script after a
    # Redis start costs a NOSCRIPT reply and an EVAL (see test_noscript_fallback).
    warm = (await own_client.post(documents, data={"UniqueName": "warm"})).json()["sid"]
    await own_client.post(f"{documents}/{warm}", data={"Data": "{}"})
    await own_client.get(f"{documents}/{warm}")
    await own_client.get(documents)
    await own_client.delete(f"{documents}/{warm}")

    created, sent, changed = await observe(
        own_redis_client,
        lambda: own_client.post(documents, data={"UniqueName": "d", "Data": '{"a":1}', "Ttl": "60"}),
    )
    assert created.status_code == 201
    assert sent == ["EVALSHA"]
    assert changed.get("evalsha") == 1 and "eval" not in changed, changed
    assert set(changed) - {"evalsha"} <= SCRIPT_COMMANDS, changed
    url = f"{documents}/{created.json()['sid']}"

    for action, status, calls in (
        (
            lambda: own_client.post(url, data={"Data": '{"a":2}', "Ttl": "0"}, headers={"If-Match": "0"}),
            200,
            1,
        ),
        (lambda: own_client.get(url), 200, 1),
        (lambda: own_client.get(f"{documents}/d"), 200, 1),
        (lambda: own_client.get(documents), 200, 2),  # doc_list, then doc_pick
        (lambda: own_client.delete(url), 204, 1),
    ):
        response, sent, changed = await observe(own_redis_client, action)
        assert response.status_code == status, response.text
        assert sent == ["EVALSHA"] * calls, (response.request.method, response.request.url, sent)
        assert changed.get("evalsha") == calls and "eval" not in changed, changed
        assert set(changed) - {"evalsha"} <= SCRIPT_COMMANDS, changed


async def test_failed_writes_are_one_round_trip_too(
    own_client: httpx.AsyncClient, own_redis_client: Observer
) -> None:
    service = (await own_client.post("/v1/Services")).json()["sid"]
    documents = f"/v1/Services/{service}/Documents"
    doc = (await own_client.post(documents, data={"UniqueName": "taken"})).json()
    for action, status in (
        (
            lambda: own_client.post(
                f"{documents}/{doc['sid']}", data={"Data": "{}"}, headers={"If-Match": "5"}
            ),
            412,
        ),
        (lambda: own_client.post(documents, data={"UniqueName": "taken"}), 409),
        (lambda: own_client.get(f"{documents}/missing"), 404),
    ):
        response, sent, _ = await observe(own_redis_client, action)
        assert response.status_code == status
        assert sent == ["EVALSHA"]
    # Invalid input never reaches Redis at all.
    response, sent, _ = await observe(
        own_redis_client, lambda: own_client.post(documents, data={"Data": "[]"})
    )
    assert response.status_code == 400
    assert sent == []


async def test_noscript_fallback(own_client: httpx.AsyncClient, own_redis_client: Observer) -> None:
    service = (await own_client.post("/v1/Services")).json()["sid"]
    documents = f"/v1/Services/{service}/Documents"
    # As after a Redis restart or failover: the script cache is empty.
    await own_redis_client.redis.script_flush()
    response, sent, _ = await observe(own_redis_client, lambda: own_client.post(documents))
    assert response.status_code == 201
    assert sent == ["EVALSHA", "EVAL"]
    # EVAL cached the script again.
    response, sent, _ = await observe(own_redis_client, lambda: own_client.post(documents))
    assert response.status_code == 201
    assert sent == ["EVALSHA"]


async def test_a_client_write_checks_its_permission_in_the_same_round_trip(
    own_client: httpx.AsyncClient, own_redis_client: Observer, own_redis: RedisProcess
) -> None:
    """Access control costs no round trip: the right is checked inside the write's own script."""
    service = (await own_client.post("/v1/Services", data={"AclEnabled": "true"})).json()["sid"]
    documents_url = f"/v1/Services/{service}/Documents"
    doc = (await own_client.post(documents_url, data={"UniqueName": "guarded"})).json()["sid"]
    granted = await own_client.post(
        f"{documents_url}/{doc}/Permissions/alice", data={"Read": "true", "Write": "true", "Manage": "false"}
    )
    assert granted.status_code == 200
    store = RedisStore(Redis.from_url(own_redis.url), TEST_ACCOUNT_SID)
    documents = DocumentService(store)
    alice = Principal.client("alice", service).on_endpoint("CN" + "0" * 32)
    mallory = Principal.client("mallory", service).on_endpoint("CN" + "1" * 32)
    try:
        await documents.write(alice, doc, data={"warm": True})  # the connection and the script cache
        written, sent, changed = await observe(
            own_redis_client, lambda: documents.write(alice, doc, data={"by": "alice"}, if_match="1")
        )
        assert written.revision == 2
        assert sent == ["EVALSHA"]
        assert changed.get("evalsha") == 1 and "eval" not in changed, changed

        async def refused() -> errors.SyncError:
            try:
                await documents.write(mallory, doc, data={"by": "mallory"})
            except errors.ForbiddenError as exc:
                return exc
            raise AssertionError("the write went through")

        error, sent, changed = await observe(own_redis_client, refused)
        assert (error.code, error.status) == (54007, 403)
        assert sent == ["EVALSHA"]
        assert changed.get("evalsha") == 1 and "publish" not in changed, changed
    finally:
        await store.close()
