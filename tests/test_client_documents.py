"""The Python client against real server processes: documents, events, writes and their errors.

Two servers share the session's Redis; REST writes go to the other server than the one the client
is connected to, so every event the client sees has crossed Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sync_client import (
    ConnectionState,
    DocumentRemoved,
    DocumentUpdated,
    NotFoundError,
    RevisionMismatchError,
    SyncClient,
    UniqueNameConflictError,
)
from sync_server.embedded import RedisProcess
from tests.support.processes import ServerProcess
from tests.support.realtime import (
    BASIC,
    WAIT,
    basic_client,
    documents_url,
    eventually,
    next_event,
    start_servers,
    stop_servers,
)


@pytest.fixture(scope="module")
def servers(
    redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    procs = start_servers(tmp_path_factory.mktemp("client-documents"), redis_proc.url)
    yield procs
    stop_servers(procs)


async def rest_set(
    server: ServerProcess, service: str, doc: str, data: dict[str, object]
) -> dict[str, object]:
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as http:
        response = await http.post(documents_url(server, service, doc), data={"Data": json.dumps(data)})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_events_reach_callbacks_and_iterators_in_order(
    servers: list[ServerProcess], service: str
) -> None:
    a, b = servers
    async with basic_client(a, service) as client:
        doc = await client.document("board", data={"x": 0})
        assert (doc.revision, doc.data, doc.unique_name, doc.created_by) == ("0", {"x": 0}, "board", "system")
        seen: list[DocumentUpdated | DocumentRemoved] = []
        doc.on("updated", seen.append)
        stream = doc.events()
        for x in (1, 2):
            await rest_set(b, service, "board", {"x": x})
        received = [await next_event(stream), await next_event(stream)]
        updates = [
            (e.revision, e.previous_revision, e.data) for e in received if isinstance(e, DocumentUpdated)
        ]
        assert updates == [("1", "0", {"x": 1}), ("2", "1", {"x": 2})]
        assert seen == received
        assert (doc.revision, doc.data) == ("2", {"x": 2})


async def test_own_writes_fire_updated_once(servers: list[ServerProcess], service: str) -> None:
    a, b = servers
    async with basic_client(a, service) as client:
        doc = await client.document("mine")
        revisions: list[str] = []
        doc.on("updated", lambda event: revisions.append(event.revision))
        stream = doc.events()
        assert await doc.set({"v": 1}) == {"v": 1}
        # The reply and the pushed event of the same write both arrive; the next write's event comes
        # after both, so once it is seen a duplicate would have been too.
        await rest_set(b, service, "mine", {"v": 2})
        while (await next_event(stream)).revision != "2":
            pass
        assert revisions == ["1", "2"]


async def test_update_merges_on_the_server(servers: list[ServerProcess], service: str) -> None:
    a, b = servers
    async with basic_client(a, service) as client:
        doc = await client.document("prefs", data={"a": 1, "b": {"c": 1}})
        assert await doc.update({"b": {"d": 2}, "e": [3]}) == {"a": 1, "b": {"d": 2}, "e": [3]}
        assert doc.data == {"a": 1, "b": {"d": 2}, "e": [3]}
        async with httpx.AsyncClient(auth=BASIC) as http:
            stored = (await http.get(documents_url(b, service, "prefs"))).json()
        assert stored["data"] == {"a": 1, "b": {"d": 2}, "e": [3]}
        assert stored["revision"] == doc.revision == "1"


async def test_set_ttl_sets_and_clears_the_expiry(servers: list[ServerProcess], service: str) -> None:
    async with basic_client(servers[0], service) as client:
        doc = await client.document("short-lived")
        assert doc.date_expires is None
        before = datetime.now(UTC)
        await doc.set_ttl(3600)
        assert doc.date_expires is not None
        assert abs(doc.date_expires - (before + timedelta(seconds=3600))) < timedelta(seconds=5)
        await doc.set_ttl(0)
        assert doc.date_expires is None


async def test_remove_fires_removed_once_and_ends_the_document(
    servers: list[ServerProcess], service: str
) -> None:
    a, b = servers
    async with basic_client(a, service) as client:
        doc = await client.document("gone")
        sentinel = await client.document("sentinel")
        removed: list[DocumentRemoved] = []
        doc.on("removed", removed.append)
        stream = doc.events()
        sentinel_events = sentinel.events()
        await doc.remove()
        assert removed == [DocumentRemoved(doc.sid, "gone", "0", "deleted")]
        assert doc.closed
        assert [event async for event in stream] == removed
        # The server's own 'removed' for the delete was published before this write's event.
        await rest_set(b, service, "sentinel", {"after": True})
        await next_event(sentinel_events)
        assert len(removed) == 1
        async with httpx.AsyncClient(auth=BASIC) as http:
            assert (await http.get(documents_url(b, service, "gone"))).status_code == 404


async def test_open_existing_on_a_missing_document_raises_not_found(
    servers: list[ServerProcess], service: str
) -> None:
    async with basic_client(servers[0], service) as client:
        with pytest.raises(NotFoundError) as info:
            await client.document("missing", mode="open_existing")
        assert (info.value.code, info.value.status) == (54100, 404)
        with pytest.raises(NotFoundError):
            await client.document("ET" + "0" * 32, mode="open_existing")


async def test_create_new_on_an_existing_name_raises_54301(
    servers: list[ServerProcess], service: str
) -> None:
    async with basic_client(servers[0], service) as client:
        first = await client.document("unique", mode="create_new", data={"n": 1})
        with pytest.raises(UniqueNameConflictError) as info:
            await client.document("unique", mode="create_new")
        assert (info.value.code, info.value.status) == (54301, 409)
        anonymous = await client.document(mode="create_new", data={"anon": True})
        assert anonymous.unique_name is None and anonymous.sid != first.sid
        # By SID, and a second open of the same document is the same object.
        assert await client.document(first.sid, mode="open_existing") is first


async def test_if_match_conflict_raises_revision_mismatch(servers: list[ServerProcess], service: str) -> None:
    async with basic_client(servers[0], service) as client:
        doc = await client.document("guarded")
        await doc.set({"v": 1}, if_match="0")
        with pytest.raises(RevisionMismatchError) as info:
            await doc.set({"v": 2}, if_match="0")
        assert (info.value.code, info.value.status) == (54103, 412)
        assert (doc.revision, doc.data) == ("1", {"v": 1})


async def test_close_unsubscribes(servers: list[ServerProcess], service: str) -> None:
    a, b = servers
    async with basic_client(a, service) as client:
        doc = await client.document("quiet")
        sentinel = await client.document("loud")
        sentinel_events = sentinel.events()
        fired: list[str] = []
        doc.on("updated", lambda event: fired.append(event.revision))
        await doc.close()
        assert doc.closed
        await rest_set(b, service, "quiet", {"v": 1})
        await rest_set(b, service, "loud", {"v": 1})
        # Both documents' events leave this server's one Redis subscription in publish order.
        await next_event(sentinel_events)
        assert fired == []
        reopened = await client.document("quiet")
        assert reopened is not doc and reopened.revision == "1"


async def test_identity_becomes_created_by_and_states_are_reported(
    servers: list[ServerProcess], service: str
) -> None:
    client = basic_client(servers[0], service, identity="alice")
    states: list[ConnectionState] = []
    client.on("connection_state", states.append)
    async with client:
        assert (client.identity, client.service_sid, client.state) == ("alice", service, "connected")
        doc = await client.document("authored")
        assert doc.created_by == "alice"
    assert states == ["connecting", "connected", "disconnected"]


async def test_concurrent_mutate_loses_no_update(servers: list[ServerProcess], service: str) -> None:
    """10 clients on two processes each increment one counter 100 times: it ends at exactly 1000."""
    clients = [basic_client(servers[i % 2], service) for i in range(10)]
    await asyncio.gather(*(client.connect() for client in clients))
    try:
        await clients[0].document("counter", data={"n": 0})
        docs = await asyncio.gather(*(client.document("counter") for client in clients))

        async def increment(doc_index: int) -> None:
            for _ in range(100):
                await docs[doc_index].mutate(lambda data: {**data, "n": data["n"] + 1})

        started = time.monotonic()
        await asyncio.gather(*(increment(i) for i in range(10)))
        elapsed = time.monotonic() - started
        final = await docs[0].refresh()
        assert final == {"n": 1000}
        assert elapsed < 60, elapsed
        # Every client converges on the last revision through its events.
        await eventually(lambda: all(doc.data == {"n": 1000} for doc in docs))
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_connect_to_a_closed_port_times_out(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.support.processes import free_port

    client = SyncClient(f"http://127.0.0.1:{free_port()}", basic=BASIC, connect_timeout=0.5)
    with pytest.raises(Exception) as info:
        await client.connect()
    assert "could not connect" in str(info.value)
    assert client.state == "disconnected"
