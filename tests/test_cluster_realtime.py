"""Realtime on a real Redis Cluster (3 masters, 3 replicas), across two server processes: events of
documents on every master reach the subscribers of both processes (native protocol, and the official
Twilio Sync JS SDK), and the failover of issue 10: the master holding a hot document is SIGKILLed while
a writer and subscribers are active. Writes succeed again within 20 s, every subscriber ends at the
latest revision and data, no subscriber observes a revision twice or out of order, and subscribers of
documents on the other masters are not disturbed at all (same connection, no reset).

The servers are pointed at the master of the service index's slot (``{services}``): the start-up layout
check and the other management commands go to the URL's node through redis-py, which does not follow
``MOVED`` (the scripts and the hub do). The failover test kills another master, so that the event path
and the scripts' router are what it puts to the test.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from sync_client import DocumentUpdated, SyncClient
from sync_server.store import keys
from tests.support.cluster import ClusterNode, ClusterProcesses
from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, ServerProcess
from tests.support.realtime import (
    BASIC,
    WAIT,
    Peer,
    basic_client,
    close_all,
    documents_url,
    eventually,
    start_servers,
    stop_servers,
    ws_url,
)
from tests.support.sdk import access_token, missing_node_sdk, require
from tests.test_twilsock_sdk import run_scenario

FAILOVER_BOUND = 20.0
"""Seconds within which writes must succeed again after the hot document's master is killed."""


@pytest.fixture(scope="module")
def servers(
    redis_cluster: ClusterProcesses, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    url = redis_cluster.master_of_key(keys.SERVICE_INDEX).url
    procs = start_servers(tmp_path_factory.mktemp("cluster-realtime"), url)
    yield procs
    stop_servers(procs)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as client:
        yield client


@pytest.fixture
async def service(servers: list[ServerProcess], http: httpx.AsyncClient) -> str:
    response = await http.post(f"{servers[0].base_url}/v1/Services", data={"FriendlyName": "cluster"})
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


def master_of_name(cluster: ClusterProcesses, service: str, name: str) -> ClusterNode:
    """The master that holds the named document (the partition of its name, keys.py)."""
    return cluster.master_of_key(keys.prefix(keys.name_partition(service, name)))


def name_on(cluster: ClusterProcesses, service: str, where: Callable[[ClusterNode], bool]) -> str:
    for _ in range(200):
        name = "doc-" + secrets.token_hex(4)
        if where(master_of_name(cluster, service, name)):
            return name
    raise AssertionError("no name lands on a fitting master")


def url_node(cluster: ClusterProcesses, server: ServerProcess) -> ClusterNode:
    assert server.redis_url is not None
    return cluster.node_by_port(int(server.redis_url.rsplit(":", 1)[1]))


def updates(peer: Peer, sid: str) -> list[tuple[int, Any]]:
    return [
        (int(e["document"]["revision"], 16), e["document"]["data"])
        for e in peer.events
        if e["event"] == "updated" and e["document"]["sid"] == sid
    ]


async def write(http: httpx.AsyncClient, server: ServerProcess, service: str, doc: str, data: object) -> str:
    response = await http.post(documents_url(server, service, doc), data={"Data": json.dumps(data)})
    assert response.status_code == 200, response.text
    revision: str = response.json()["revision"]
    return revision


async def test_events_of_documents_on_every_master_cross_processes(
    redis_cluster: ClusterProcesses, servers: list[ServerProcess], service: str, http: httpx.AsyncClient
) -> None:
    masters = redis_cluster.masters()
    names = [name_on(redis_cluster, service, lambda m, want=m: m is want) for m in masters for _ in range(2)]
    peers = [await Peer.connect(ws_url(server, service=service)) for server in servers]
    try:
        sids = [(await peers[0].ok("open", name=name))["document"]["sid"] for name in names]
        for name in names:
            await peers[1].ok("subscribe", doc=name)
        for round_ in range(3):
            for i, name in enumerate(names):
                await write(http, servers[(i + round_) % 2], service, name, {"round": round_, "doc": i})
        for peer in peers:
            await peer.wait_until(lambda p: all(len(updates(p, sid)) == 3 for sid in sids))
            for i, sid in enumerate(sids):
                assert updates(peer, sid) == [(r + 1, {"round": r, "doc": i}) for r in range(3)]
        assert {master_of_name(redis_cluster, service, n).port for n in names} == {m.port for m in masters}
    finally:
        await close_all(peers)


def test_the_official_sdk_on_the_cluster(
    redis_cluster: ClusterProcesses, servers: list[ServerProcess], service: str
) -> None:
    require(missing_node_sdk(), "the JS SDK test")
    a, b = servers
    tokens = [access_token(service, "alice"), access_token(service, "bob")]
    first = run_scenario(a, "setUpdate", tokens=tokens, name="sdk-" + secrets.token_hex(4))
    assert first["same"] and first["a_saw"] == {"greeting": "hello", "n": 2, "from": "b"}
    # The SDK's subscriber on one process, the REST write on the other.
    name = "sdk-" + secrets.token_hex(4)
    crossed = run_scenario(
        a,
        "rest",
        tokens=tokens[:1],
        name=name,
        restUrl=documents_url(b, service, name),
        auth=f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}",
    )
    assert crossed["sdk_saw"] == {"from": "rest"}


class Watcher:
    """A Python client subscribed to one document, keeping every revision it was told of."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.seen: list[int] = []
        self.revision = -1
        self.data: Any = None
        self.first_connection: str | None = None

    async def open(self, name: str) -> None:
        await self.client.connect()
        self.first_connection = self.client.connection_id
        doc = await self.client.document(name)
        self.revision, self.data = int(doc.revision, 16), doc.data
        doc.on("updated", self._updated)

    def _updated(self, event: DocumentUpdated) -> None:
        self.revision, self.data = int(event.revision, 16), event.data
        self.seen.append(self.revision)


def hub_resets(metrics_text: str) -> dict[int, float]:
    """``sync_hub_resets_total`` by node port, from a /metrics page."""
    found: dict[int, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("sync_hub_resets_total{"):
            labels, value = line.rsplit(" ", 1)
            port = int(labels.split('node="', 1)[1].split('"', 1)[0].rsplit(":", 1)[1])
            found[port] = float(value)
    return found


async def test_a_sigkilled_master_of_a_hot_document_fails_over_and_every_subscriber_converges(
    healthy_cluster: ClusterProcesses, servers: list[ServerProcess], service: str, http: httpx.AsyncClient
) -> None:
    cluster = healthy_cluster
    pointed_at = url_node(cluster, servers[0])
    hot = name_on(cluster, service, lambda m: m is not pointed_at)
    victim = master_of_name(cluster, service, hot)
    cold = name_on(cluster, service, lambda m: m is not victim)
    for name in (hot, cold):
        created = await http.post(
            documents_url(servers[0], service), data={"UniqueName": name, "Data": '{"n": 0}'}
        )
        assert created.status_code == 201, created.text
    cold_sid = created.json()["sid"]

    watchers = [Watcher(basic_client(server, service)) for server in servers for _ in range(2)]
    # Raw protocol clients see the wire itself (nothing filters what they get): on the hot document,
    # and on the cold one (on another master).
    raw = [await Peer.connect(ws_url(server, service=service)) for server in servers]
    bystanders = [await Peer.connect(ws_url(server, service=service)) for server in servers]
    outcomes: list[tuple[float, bool]] = []  # (when a write was answered, whether it succeeded)
    stop = asyncio.Event()

    async def writer(server: ServerProcess) -> None:
        # Long timeouts: during the failover a write waits in the server for the promoted replica.
        async with httpx.AsyncClient(auth=BASIC, timeout=FAILOVER_BOUND + 10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = await client.post(
                        documents_url(server, service, hot), data={"Data": json.dumps({server.port: n})}
                    )
                    succeeded = response.status_code == 200
                except httpx.TransportError:
                    succeeded = False
                outcomes.append((time.monotonic(), succeeded))
                await asyncio.sleep(0.02)

    def successes_since(moment: float) -> list[float]:
        return [when for when, succeeded in outcomes if succeeded and when > moment]

    # One writer through each process, both on the hot document.
    writing = asyncio.gather(*(writer(server) for server in servers))
    try:
        await asyncio.gather(*(w.open(hot) for w in watchers))
        hot_sid = (await raw[0].ok("subscribe", doc=hot))["document"]["sid"]
        await raw[1].ok("subscribe", doc=hot)
        for peer in bystanders:
            await peer.ok("subscribe", doc=cold)
        await eventually(lambda: len(successes_since(0)) >= 10 and all(w.seen for w in watchers))

        killed_at = time.monotonic()
        cluster.kill(victim)
        await eventually(lambda: len(successes_since(killed_at)) >= 10, within=FAILOVER_BOUND + 10)
        stop.set()
        await writing
        recovered_in = successes_since(killed_at)[0] - killed_at
        assert recovered_in < FAILOVER_BOUND, outcomes

        final = (await http.get(documents_url(servers[0], service, hot))).json()
        latest, data = int(final["revision"], 16), final["data"]
        await eventually(lambda: all((w.revision, w.data) == (latest, data) for w in watchers))
        for watcher in watchers:
            # Told of each revision once, in order (a resubscribe's snapshot skips those missed).
            assert watcher.seen == sorted(set(watcher.seen)), watcher.seen
            # The reset reached it: it reconnected and resubscribed.
            assert watcher.client.connection_id != watcher.first_connection
        for peer in raw:
            # On the wire: closed with 4508 by the reset, every revision before it once and in order.
            assert await peer.wait_closed() == 4508
            revisions = [revision for revision, _ in updates(peer, hot_sid)]
            assert revisions and revisions == sorted(set(revisions)), revisions

        # The subscribers of the other masters' documents were left alone: same connection, no reset,
        # and they still hear every write.
        revision = await write(http, servers[1], service, cold, {"after": "failover"})
        for peer in bystanders:
            await peer.wait_until(lambda p: len(updates(p, cold_sid)) == 1)
            assert peer.close_code is None
            assert updates(peer, cold_sid) == [(int(revision, 16), {"after": "failover"})]
        for server in servers:
            page = (await http.get(f"{server.base_url}/metrics")).text
            resets = hub_resets(page)
            assert resets.get(victim.port, 0) >= 1, resets
            assert all(count == 0 for port, count in resets.items() if port != victim.port), resets
        failed = sum(1 for _, succeeded in outcomes if not succeeded)
        told = sorted(len(w.seen) for w in watchers)
        print(
            f"\nfailover: writes succeeded again {recovered_in:.2f} s after the kill ({failed} of "
            f"{len(outcomes)} failed); {len(watchers)} subscribers converged at revision {latest}, "
            f"each told of {told[0]}-{told[-1]} revisions"
        )
    finally:
        stop.set()
        await asyncio.gather(writing, return_exceptions=True)
        await asyncio.gather(*(w.client.close() for w in watchers))
        await close_all(raw + bystanders)
