"""The partitioned layout's scripts on a real Redis Cluster (3 masters, 3 replicas), through redis-py's
cluster client, which refuses any script whose keys span slots: every document operation, a listing
walk, the sweep, a service deletion, and an event by SPUBLISH to a sharded subscriber. Then, through the
store's own cluster connection: 10,000 documents of one service spread evenly over the masters, and the
management commands (services, the purge state) routed to the master of their key."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from sync_server import errors
from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore
from sync_server.store.scripts import load_scripts
from tests.support.cluster import ClusterNode, ClusterProcesses
from tests.support.processes import TEST_ACCOUNT_SID


class ClusterScripts:
    """Runs the store's scripts through redis-py's cluster client (routed by their keys' slot)."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self.connection = client  # chosen: the store asks no INFO cluster
        self.scripts = load_scripts()
        self.calls = 0

    async def command(self, key: str, *args: str | int | bytes) -> Any:
        """A plain command, routed by redis-py by its keys (here only DEL, ZREM and SCARD, whose
        integer replies redis-py leaves as Redis sent them)."""
        return await self.client.execute_command(*args)

    async def run(self, name: str, keys_: list[str], args: list[str | int | bytes]) -> Any:
        script = self.scripts[name]
        self.calls += 1
        try:
            return await self.client.evalsha(script.sha, len(keys_), *keys_, *args)  # type: ignore[misc]
        except NoScriptError:
            return await self.client.eval(script.source.decode(), len(keys_), *keys_, *args)  # type: ignore[misc]

    async def aclose(self) -> None:
        await self.client.aclose()


async def test_the_scripts_run_on_a_cluster_one_slot_each(healthy_cluster: ClusterProcesses) -> None:
    host, port = healthy_cluster.startup_nodes[0]
    cluster = RedisCluster(host=host, port=port)
    # Initialised before the store's concurrent calls (64 at once): redis-py's lazy initialisation
    # races with itself otherwise.
    await cluster.initialize()
    await cluster.ping(target_nodes=RedisCluster.PRIMARIES)
    store = RedisStore(Redis(host=host, port=port), TEST_ACCOUNT_SID, cluster=True)
    await store.close()  # its standalone connections are not used: the cluster client carries all
    store.redis = cluster  # type: ignore[assignment]
    store._scripts = ClusterScripts(cluster)  # type: ignore[assignment]
    try:
        service = (await store.create_service({})).sid
        who = Principal.system(service)
        created = []
        for i in range(60):
            doc = await store.create_document(
                who, f"n{i}" if i % 2 else None, json.dumps({"i": i}).encode(), 0
            )
            created.append(doc.sid)
        masters = {healthy_cluster.master_of_key(keys.document_key(service, sid)).port for sid in created}
        assert len(masters) == 3
        assert (await store.fetch_document(who, "n1")).sid == created[1]
        assert (await store.fetch_document(who, created[2])).data == b'{"i": 2}'
        with pytest.raises(errors.UniqueNameConflict):
            await store.create_document(who, "n1", b"{}", 0)

        # An event by SPUBLISH reaches a sharded subscriber of the document's channel.
        channel = keys.document_channel(service, created[1])
        pubsub = cluster.pubsub()
        await pubsub.ssubscribe(channel)
        await asyncio.sleep(0.2)
        written = await store.write_document(who, "n1", data=b'{"v":1}', if_match="0")
        assert written.revision == 1
        message = None
        for _ in range(50):
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                break
        assert message is not None
        assert json.loads(message["data"].split(b"\n")[0])["r"] == 1
        await pubsub.aclose()

        seen: list[str] = []
        after = None
        while True:
            page = await store.list_documents(service, after=after, before=None, size=7)
            seen += [d.sid for d in page.items]
            if not page.more:
                break
            after = page.last_cursor
        assert seen == created

        # Another process may sweep the session's cluster too (a server of another test module): what
        # must hold is that the entries go, whoever sweeps them.
        expiring = await store.create_document(who, "brief", b"{}", 3600)
        await cluster.pexpire(keys.document_key(service, expiring.sid), 1)
        await asyncio.sleep(0.05)
        entry = keys.index(keys.sid_partition(expiring.sid), service)
        for _ in range(40):
            await store.sweep_expired()
            if await cluster.zscore(entry, expiring.sid) is None:
                break
        assert await cluster.zscore(entry, expiring.sid) is None

        await store.delete_service(service)
        with pytest.raises(errors.ServiceNotFound):
            await store.fetch_document(who, created[0])
        purged = 0
        for _ in range(5):
            await store.sweep_expired()
            purged += store.last_purged
            if not await store.purging():
                break
        assert not await store.purging()
        assert 0 < purged <= 60
        assert await cluster.exists(*(keys.document_key(service, sid) for sid in created)) == 0
    finally:
        await cluster.aclose()


SPREAD_DOCUMENTS = 10_000


async def test_ten_thousand_documents_of_one_service_spread_evenly_over_the_masters(
    redis_cluster: ClusterProcesses,
) -> None:
    store = RedisStore(Redis.from_url(redis_cluster.url), TEST_ACCOUNT_SID)
    try:
        service = (await store.create_service({"friendly_name": "spread"})).sid
        who = Principal.system(service)
        created: list[str] = []
        for start in range(0, SPREAD_DOCUMENTS, 1000):
            # Half named (their name's partition), half not (a random one); 1000 scripts in flight.
            batch = [
                store.create_document(who, f"name-{i}" if i % 2 else None, b"{}", 0)
                for i in range(start, start + 1000)
            ]
            created += [doc.sid for doc in await asyncio.gather(*batch)]
        per_master = {
            master.port: count_keys(master, f"sync:*:d:{service}:*") for master in redis_cluster.masters()
        }
        assert sum(per_master.values()) == SPREAD_DOCUMENTS
        mean = SPREAD_DOCUMENTS / len(per_master)
        assert len(per_master) == 3
        assert all(0.8 * mean <= count <= 1.2 * mean for count in per_master.values()), per_master
        assert (await store.fetch_document(who, "name-9999")).sid == created[9999]
        assert (await store.fetch_document(who, created[4000])).sid == created[4000]

        # The management commands, each on the master of its key.
        assert (await store.fetch_service(service)).friendly_name == "spread"
        listed = await store.list_services(after=None, before=None, size=1000)
        assert service in [s.sid for s in listed.items]
        await store.delete_service(service)
        with pytest.raises(errors.ServiceNotFound):
            await store.fetch_service(service)
        assert await store.purging()
        while await store.purging():
            await store.sweep_expired()
        assert sum(count_keys(m, f"*{service}*") for m in redis_cluster.masters()) == 0
    finally:
        await store.close()


def count_keys(node: ClusterNode, pattern: str) -> int:
    """Keys of ``node`` (only its own: SCAN does not follow the cluster) matching ``pattern``."""
    found, cursor = 0, b"0"
    while True:
        cursor, batch = node.command("SCAN", cursor, "MATCH", pattern, "COUNT", 5000)
        found += len(batch)
        if cursor == b"0":
            return found
