"""The REST API on a real Redis Cluster (3 masters, 3 replicas), through a real server process pointed at
one node's URL, as a user would run it.

A representative part of the REST suite runs here unchanged: the test functions are imported from their
modules and collected again in this one, where ``client`` is an HTTP client of the server on the cluster
(so ``service`` is a service made there). Then what only a cluster shows: documents of one service on
every master and a paging walk over them, expiry with exactly one ``removed`` while two server processes
sweep, a service deletion purged from every master, and ``/healthz`` per master (one full, one killed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sync_server.store import keys
from tests.support.cluster import ClusterProcesses
from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, ServerProcess
from tests.support.realtime import eventually
from tests.support.rest import documents, expect_error
from tests.support.sharded import ShardedListener
from tests.test_rest_documents import (
    test_conditional_race_in_process,
    test_create_with_name_and_data_then_fetch_both_ways,
    test_data_round_trips,
    test_delete,
    test_if_match_mismatch_writes_nothing,
    test_list_in_creation_order,
    test_unencoded_slash_in_a_name_reaches_the_document,
    test_unique_names_in_the_path,
    test_update_data,
)
from tests.test_rest_errors import test_duplicate_unique_name, test_unknown_document
from tests.test_rest_paging import (
    create_many,
    test_default_page_size_is_50,
    test_previous_page_url_leads_back,
    test_walk_while_documents_come_and_go,
    test_walk_with_concurrent_writers,
    walk,
)
from tests.test_rest_services import (
    test_list_pages_in_creation_order,
    test_unknown_service_is_54050,
    test_update,
)

REUSED = (
    test_conditional_race_in_process,
    test_create_with_name_and_data_then_fetch_both_ways,
    test_data_round_trips,
    test_default_page_size_is_50,
    test_delete,
    test_duplicate_unique_name,
    test_if_match_mismatch_writes_nothing,
    test_list_in_creation_order,
    test_list_pages_in_creation_order,
    test_previous_page_url_leads_back,
    test_unencoded_slash_in_a_name_reaches_the_document,
    test_unique_names_in_the_path,
    test_unknown_document,
    test_unknown_service_is_54050,
    test_update,
    test_update_data,
    test_walk_while_documents_come_and_go,
    test_walk_with_concurrent_writers,
)
"""Collected here too (pytest collects every ``test_*`` function of a module's namespace)."""

WAIT = 20.0


@pytest.fixture(scope="module")
async def client(cluster_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """Overrides conftest's in-process client: the server process on the cluster."""
    auth = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    async with httpx.AsyncClient(base_url=cluster_server.base_url, auth=auth, timeout=WAIT) as http:
        yield http


def masters_of(cluster: ClusterProcesses, service: str, sids: list[str]) -> set[int]:
    return {cluster.master_of_key(keys.document_key(service, sid)).port for sid in sids}


async def test_one_service_lies_on_every_master_and_pages_over_them(
    client: httpx.AsyncClient, service: str, redis_cluster: ClusterProcesses
) -> None:
    sids = await create_many(client, service, 90)
    assert masters_of(redis_cluster, service, sids) == {m.port for m in redis_cluster.masters()}
    for sid in sids[:5]:
        owner = redis_cluster.master_of_key(keys.document_key(service, sid))
        assert owner.command("EXISTS", keys.document_key(service, sid)) == 1
    pages = await walk(client, f"{documents(service)}?PageSize=7")
    assert [sid for page in pages for sid in page] == sids
    assert all(len(page) <= 7 for page in pages)


async def test_expiry_publishes_exactly_one_removed_with_two_servers_sweeping(
    client: httpx.AsyncClient, service: str, redis_cluster: ClusterProcesses, tmp_path: Path
) -> None:
    second = ServerProcess(tmp_path, redis_url=redis_cluster.masters()[-1].url).start()
    listener = ShardedListener(redis_cluster)
    try:
        sids = await create_many(client, service, 24)
        assert len(masters_of(redis_cluster, service, sids)) == 3
        await listener.subscribe([keys.document_channel(service, sid) for sid in sids])
        for sid in sids:
            response = await client.post(f"{documents(service)}/{sid}", data={"Ttl": "1"})
            assert response.status_code == 200, response.text

        def removed(sid: str) -> list[dict[str, object]]:
            return [e for e in listener.events[keys.document_channel(service, sid)] if e["e"] == "removed"]

        await eventually(lambda: all(removed(sid) for sid in sids), WAIT)
        await asyncio.sleep(1.0)  # five more sweeps of each server: a second `removed` would show
        for sid in sids:
            # The last revision when the hash was still there, None when Redis had evicted it first.
            (event,) = removed(sid)
            assert {k: v for k, v in event.items() if k != "r"} == {
                "e": "removed", "s": service, "sid": sid, "n": None, "why": "expired"
            }  # fmt: skip
            expect_error(await client.get(f"{documents(service)}/{sid}"), 404, 20404)
        assert (await client.get(documents(service))).json()["documents"] == []
    finally:
        await listener.close()
        second.stop()


async def test_a_deleted_service_is_gone_at_once_and_purged_from_every_master(
    client: httpx.AsyncClient, redis_cluster: ClusterProcesses
) -> None:
    service = (await client.post("/v1/Services", data={"FriendlyName": "doomed"})).json()["sid"]
    sids = await create_many(client, service, 40)
    named = (await client.post(documents(service), data={"UniqueName": "named"})).json()["sid"]
    assert (await client.get(f"/v1/Services/{service}")).json()["friendly_name"] == "doomed"
    assert (await client.delete(f"/v1/Services/{service}")).status_code == 204
    expect_error(await client.get(f"/v1/Services/{service}"), 404, 54050)
    expect_error(await client.get(f"{documents(service)}/{sids[0]}"), 404, 54050)
    expect_error(await client.get(f"{documents(service)}/named"), 404, 54050)
    expect_error(await client.delete(f"/v1/Services/{service}"), 404, 54050)
    listed = (await client.get("/v1/Services", params={"PageSize": 1000})).json()["services"]
    assert service not in [s["sid"] for s in listed]

    def left() -> list[bytes]:
        # Every key that names the service, on every master (the server's sweeper purges them).
        found: list[bytes] = []
        for master in redis_cluster.masters():
            cursor = b"0"
            while True:
                cursor, batch = master.command("SCAN", cursor, "MATCH", f"*{service}*", "COUNT", 1000)
                found += batch
                if cursor == b"0":
                    break
        return found

    await eventually(lambda: not left(), WAIT)
    assert masters_of(redis_cluster, service, [*sids, named]) == {m.port for m in redis_cluster.masters()}


async def test_healthz_names_a_full_master(
    client: httpx.AsyncClient, redis_cluster: ClusterProcesses
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    full = redis_cluster.masters()[1]
    full.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    full.command("CONFIG", "SET", "maxmemory", 1)
    try:
        health = await client.get("/healthz")
        assert health.status_code == 503
        detail = f"Redis is out of memory (maxmemory reached) (cluster master 127.0.0.1:{full.port})"
        assert health.json() == {"status": "degraded", "detail": detail}
    finally:
        full.command("CONFIG", "SET", "maxmemory", 0)
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_healthz_names_a_dead_master_until_its_replica_takes_over(
    client: httpx.AsyncClient, healthy_cluster: ClusterProcesses
) -> None:
    victim = healthy_cluster.masters()[0]
    healthy_cluster.kill(victim)
    health = await client.get("/healthz")
    assert health.status_code == 503
    detail = f"Redis is unreachable (cluster master 127.0.0.1:{victim.port})"
    assert health.json() == {"status": "degraded", "detail": detail}
    await asyncio.to_thread(healthy_cluster.wait_failover, victim)

    async def healthy() -> bool:
        return (await client.get("/healthz")).status_code == 200

    await eventually(healthy, WAIT)
    # Writes and management commands reach the promoted replica.
    service = (await client.post("/v1/Services")).json()["sid"]
    assert len(await create_many(client, service, 30)) == 30
    assert (await client.get(f"/v1/Services/{service}")).status_code == 200
