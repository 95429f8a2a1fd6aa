"""The Python client across server crashes and restarts: it reconnects, resubscribes from the
revisions it holds and converges, whatever was written while it was away.

``victim`` is a server process the tests kill (SIGKILL, or SIGSTOP first to hold replies in
flight) and restart on the same port; ``witness`` shares its Redis and takes the REST writes
meanwhile. Losing the server's Redis pub/sub connection is tested on a Redis of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from sync_client import ConnectionClosedError, ConnectionState, DocumentRemoved, DocumentUpdated
from sync_server.embedded import RedisProcess
from tests.support.processes import ServerProcess, start_redis
from tests.support.realtime import (
    BASIC,
    WAIT,
    Peer,
    basic_client,
    documents_url,
    eventually,
    start_servers,
    stop_servers,
    ws_url,
)


@pytest.fixture(scope="module")
def servers(
    redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    procs = start_servers(tmp_path_factory.mktemp("reconnect"), redis_proc.url)
    yield procs
    stop_servers(procs)


async def rest_write(server: ServerProcess, service: str, doc: str, data: dict[str, object]) -> str:
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as http:
        response = await http.post(documents_url(server, service, doc), data={"Data": json.dumps(data)})
    assert response.status_code == 200, response.text
    revision: str = response.json()["revision"]
    return revision


async def test_client_converges_after_a_crash(servers: list[ServerProcess], service: str) -> None:
    victim, witness = servers
    client = basic_client(victim, service)
    states: list[ConnectionState] = []
    client.on("connection_state", states.append)
    async with client:
        doc = await client.document("survivor", data={"v": 0})
        doomed = await client.document("doomed")
        updates: list[DocumentUpdated] = []
        removed: list[DocumentRemoved] = []
        doc.on("updated", updates.append)
        doomed.on("removed", removed.append)
        first_connection = client.connection_id

        victim.kill()
        await eventually(lambda: client.state != "connected")
        # Written while the client has no connection: it must catch up on the last one only.
        for v in (1, 2, 3):
            latest = await rest_write(witness, service, "survivor", {"v": v})
        async with httpx.AsyncClient(auth=BASIC) as http:
            assert (await http.delete(documents_url(witness, service, "doomed"))).status_code == 204
        await asyncio.to_thread(victim.start)

        await eventually(lambda: doc.revision == latest and bool(removed))
        assert client.connection_id != first_connection
        assert (doc.data, doc.revision) == ({"v": 3}, "3")
        assert [(u.revision, u.previous_revision, u.data) for u in updates] == [("3", "0", {"v": 3})]
        assert removed == [DocumentRemoved(doomed.sid, "doomed", None, "deleted")] and doomed.closed
        # Subscribed again: later writes arrive as events.
        await rest_write(witness, service, "survivor", {"v": 4})
        await eventually(lambda: doc.revision == "4")
    assert states[:3] == ["connecting", "connected", "disconnected"]
    assert states[-2:] == ["connected", "disconnected"]


async def test_in_flight_writes_fail_and_reads_are_retried(
    servers: list[ServerProcess], service: str
) -> None:
    victim, _ = servers
    async with basic_client(victim, service) as client:
        doc = await client.document("in-flight")
        assert victim.pid is not None
        # A stopped server reads nothing and answers nothing: both commands stay in flight.
        os.kill(victim.pid, signal.SIGSTOP)
        write = asyncio.create_task(doc.set({"lost?": True}))
        read = asyncio.create_task(doc.refresh())
        await asyncio.sleep(0.3)
        assert not write.done() and not read.done()
        victim.kill()
        with pytest.raises(ConnectionClosedError):
            await write  # may or may not have been applied: never resent
        await asyncio.to_thread(victim.start)
        assert await asyncio.wait_for(read, WAIT) == doc.data


async def test_graceful_restart_closes_with_1001_and_the_client_returns(
    servers: list[ServerProcess], service: str
) -> None:
    victim, witness = servers
    peer = await Peer.connect(ws_url(victim, service=service))
    async with basic_client(victim, service) as client:
        doc = await client.document("restarted")
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGTERM)
        assert await peer.wait_closed() == 1001
        # Not waiting for the process to exit: it can take the full stop timeout (see stop_servers).
        victim.kill()
        revision = await rest_write(witness, service, "restarted", {"after": "restart"})
        await asyncio.to_thread(victim.start)
        await eventually(lambda: doc.revision == revision)
        assert doc.data == {"after": "restart"}


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[tuple[RedisProcess, ServerProcess]]:
    redis_process = start_redis(tmp_path / "redis")
    server = ServerProcess(tmp_path / "server", redis_url=redis_process.url).start()
    yield redis_process, server
    stop_servers([server])
    redis_process.stop()


async def test_client_recovers_when_the_server_loses_its_redis_subscriptions(
    isolated: tuple[RedisProcess, ServerProcess],
) -> None:
    redis_process, server = isolated
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as http:
        service = (await http.post(f"{server.base_url}/v1/Services")).json()["sid"]
    peer = await Peer.connect(ws_url(server, service=service))
    await peer.ok("open", name="relay")
    redis = Redis.from_url(redis_process.url)
    try:
        async with basic_client(server, service) as client:
            doc = await client.document("relay")
            first_connection = client.connection_id
            # Events published while the server's pub/sub connection is down are lost to it: it must
            # drop its subscribers (4508, "just reconnect") so that they resubscribe and catch up.
            await redis.client_kill_filter(_type="pubsub")
            assert await peer.wait_closed() == 4508
            revision = await rest_write(server, service, "relay", {"after": "reset"})
            await eventually(lambda: doc.revision == revision)
            assert doc.data == {"after": "reset"} and client.connection_id != first_connection
            revision = await rest_write(server, service, "relay", {"after": "recovery"})
            await eventually(lambda: doc.revision == revision)
    finally:
        await redis.aclose()
