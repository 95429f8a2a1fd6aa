"""Revocation reaches live subscriptions: across processes, racing writes, before any later write.

The permission script publishes a ``revoked`` control event on the document's own channel in the
same atomic step as the change, so every subscriber sees it in channel order: a reader whose read
right goes away receives ``subscription_ended`` (54007) and not one update written after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sync_client import DocumentAccessRevoked, SyncClient
from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    ServerProcess,
)
from tests.support.realtime import WAIT, Peer, start_servers, stop_servers, ws_url

AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)


@pytest.fixture(scope="module")
def servers(
    redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    started = start_servers(Path(tmp_path_factory.mktemp("revocation")), redis_proc.url)
    yield started
    stop_servers(started)


def token(service: str, identity: str) -> str:
    return mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, identity, service)


def rest(server: ServerProcess, method: str, path: str, **data: str) -> httpx.Response:
    response = httpx.request(method, f"{server.base_url}/v1/Services{path}", data=data or None, auth=AUTH)
    assert response.status_code < 300, response.text
    return response


def setup(server: ServerProcess, *, acl: bool, readers: list[str]) -> tuple[str, str]:
    """A service, one document on it, and read rights for ``readers``."""
    service = rest(server, "POST", "", AclEnabled=str(acl).lower()).json()["sid"]
    doc = rest(server, "POST", f"/{service}/Documents", UniqueName="board", Data='{"n":0}').json()["sid"]
    for reader in readers:
        rest(
            server,
            "POST",
            f"/{service}/Documents/{doc}/Permissions/{reader}",
            Read="true",
            Write="false",
            Manage="false",
        )
    return service, doc


def updates(peer: Peer) -> list[int]:
    return [int(e["document"]["revision"], 16) for e in peer.events if e["event"] == "updated"]


def ended(peer: Peer) -> list[dict[str, object]]:
    return [e for e in peer.events if e["event"] == "subscription_ended"]


async def hammer(writer: Peer, doc: str, stop: asyncio.Event) -> int:
    """Writes as fast as one connection can until ``stop``; returns how many writes landed."""
    count = 0
    while not stop.is_set():
        count += 1
        await writer.ok("set", doc=doc, data={"n": count})
    return count


@pytest.mark.parametrize("how", ["delete", "lower"])
async def test_a_revoked_reader_gets_no_write_made_after_the_revocation(
    servers: list[ServerProcess], how: str
) -> None:
    a, b = servers
    service, doc = setup(a, acl=True, readers=["reader", "keeper"])
    reader = await Peer.connect(ws_url(a, token=token(service, "reader")), basic=False)
    keeper = await Peer.connect(ws_url(a, token=token(service, "keeper")), basic=False)
    writer = await Peer.connect(ws_url(b, service=service))
    try:
        await reader.ok("subscribe", doc=doc)
        await keeper.ok("subscribe", doc=doc)
        stop = asyncio.Event()
        writes = asyncio.create_task(hammer(writer, doc, stop))
        await reader.wait_until(lambda p: len(updates(p)) >= 20)
        path = f"/{service}/Documents/{doc}/Permissions/reader"
        if how == "delete":
            rest(b, "DELETE", path)
        else:
            rest(b, "POST", path, Read="false", Write="true", Manage="true")
        # Every write with a revision above this one was certainly made after the revocation.
        bound = int(rest(b, "GET", f"/{service}/Documents/{doc}").json()["revision"], 16)
        await reader.wait_until(lambda p: bool(ended(p)))
        await keeper.wait_until(lambda p: max(updates(p), default=0) > bound + 20)
        stop.set()
        total = await writes
        await keeper.wait_until(lambda p: max(updates(p), default=0) >= total)

        [end] = ended(reader)
        assert end["sid"] == doc and end["unique_name"] == "board"
        assert end["error"] == {
            "code": 54007,
            "message": "The read permission on this document was revoked",
            "status": 403,
        }
        # Nothing after the control event, and nothing written after the revocation returned.
        assert reader.events[-1] is end
        assert max(updates(reader)) <= bound
        assert updates(reader) == sorted(set(updates(reader)))
        # The keeper still holds its read right and saw every write, in order.
        assert updates(keeper) == list(range(1, total + 1))
        # The connection stays up; subscribing again is refused like any read without the right.
        again = await reader.command("subscribe", doc=doc)
        assert again["error"]["code"] == 54007
        assert reader.close_code is None
    finally:
        for peer in (reader, keeper, writer):
            await peer.close()


async def test_enabling_acl_ends_every_subscription_it_does_not_allow(servers: list[ServerProcess]) -> None:
    a, b = servers
    service, doc = setup(a, acl=False, readers=["allowed"])
    allowed = await Peer.connect(ws_url(a, token=token(service, "allowed")), basic=False)
    denied = await Peer.connect(ws_url(b, token=token(service, "denied")), basic=False)
    backend = await Peer.connect(ws_url(b, service=service, identity="backend"))
    try:
        for peer in (allowed, denied, backend):
            await peer.ok("subscribe", doc=doc)
        rest(a, "POST", f"/{service}", AclEnabled="true")
        rest(a, "POST", f"/{service}/Documents/{doc}", Data='{"n":1}')
        await denied.wait_until(lambda p: bool(ended(p)))
        await allowed.wait_until(lambda p: updates(p) == [1])
        await backend.wait_until(lambda p: updates(p) == [1])
        assert updates(denied) == []
        await asyncio.sleep(0.2)
        assert ended(allowed) == [] and ended(backend) == []
    finally:
        for peer in (allowed, denied, backend):
            await peer.close()


async def test_granting_read_lets_a_refused_client_subscribe(servers: list[ServerProcess]) -> None:
    a, _ = servers
    service, doc = setup(a, acl=True, readers=[])
    late = await Peer.connect(ws_url(a, token=token(service, "late")), basic=False)
    try:
        assert (await late.command("subscribe", doc=doc))["error"]["code"] == 54007
        rest(
            a,
            "POST",
            f"/{service}/Documents/{doc}/Permissions/late",
            Read="true",
            Write="false",
            Manage="false",
        )
        assert (await late.ok("subscribe", doc=doc))["document"]["revision"] == "0"
        rest(a, "POST", f"/{service}/Documents/{doc}", Data='{"n":1}')
        async with asyncio.timeout(WAIT):
            await late.wait_until(lambda p: updates(p) == [1])
    finally:
        await late.close()


async def test_the_python_client_reports_a_revoked_read(servers: list[ServerProcess]) -> None:
    """``sync_client`` turns ``subscription_ended`` into the document's ``revoked`` event and closes it."""
    a, b = servers
    service, doc = setup(a, acl=True, readers=["reader"])
    revoked: list[DocumentAccessRevoked] = []
    told = asyncio.Event()

    def on_revoked(event: DocumentAccessRevoked) -> None:
        revoked.append(event)
        told.set()

    async with SyncClient(a.base_url, token=token(service, "reader")) as client:
        document = await client.document(doc, mode="open_existing")
        document.on("revoked", on_revoked)
        rest(b, "DELETE", f"/{service}/Documents/{doc}/Permissions/reader")
        async with asyncio.timeout(WAIT):
            await told.wait()
        message = "The read permission on this document was revoked"
        assert revoked == [DocumentAccessRevoked(doc, "board", 54007, message)]
        assert document.closed
        # The server's document lives on; the client's copy no longer follows it.
        rest(b, "POST", f"/{service}/Documents/{doc}", Data='{"n":9}')
        await asyncio.sleep(0.2)
        assert document.data == {"n": 0}
