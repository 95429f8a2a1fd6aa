"""The partitioned layout's scripts on a real Redis Cluster (3 masters, 3 replicas), through redis-py's
cluster client, which refuses any script whose keys span slots: every document operation, a listing
walk, the sweep, a service deletion, and an event by SPUBLISH to a sharded subscriber."""

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
from tests.support.cluster import ClusterProcesses
from tests.support.processes import TEST_ACCOUNT_SID


class ClusterScripts:
    """Runs the store's scripts through redis-py's cluster client (routed by their keys' slot)."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self.scripts = load_scripts()
        self.calls = 0

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

        expiring = await store.create_document(who, "brief", b"{}", 3600)
        await cluster.pexpire(keys.document_key(service, expiring.sid), 1)
        await asyncio.sleep(0.05)
        removed = 0
        for _ in range(40):
            removed += await store.sweep_expired()
            if (
                await cluster.zscore(keys.index(keys.sid_partition(expiring.sid), service), expiring.sid)
                is None
            ):
                break
        assert removed >= 1

        await store.delete_service(service)
        with pytest.raises(errors.ServiceNotFound):
            await store.fetch_document(who, created[0])
        purged = 0
        for _ in range(5):
            await store.sweep_expired()
            purged += store.last_purged
        assert purged == 60
        assert await cluster.exists(*(keys.document_key(service, sid) for sid in created[:10])) == 0
    finally:
        await cluster.aclose()
