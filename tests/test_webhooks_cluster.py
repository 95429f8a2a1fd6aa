"""Webhooks on a real Redis Cluster (3 masters, 3 replicas): the write scripts append to their
partition's outbox within their slot, and the deliverer reads each partition on a connection to the
master of its slot (a blocking read cannot span slots), parks, retries and trims there, in-process
against a real HTTP receiver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore
from sync_server.store.webhook_outbox import RedisOutbox
from sync_server.webhooks.deliverer import Deliverer
from sync_server.webhooks.retry import RetryPolicy
from sync_server.webhooks.sender import Sender
from tests.support.cluster import ClusterProcesses
from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN
from tests.support.webhooks import Received, Receiver, valid_signature


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@contextlib.asynccontextmanager
async def cluster_store(cluster: ClusterProcesses) -> AsyncIterator[RedisStore]:
    host, port = cluster.startup_nodes[0]
    store = RedisStore(Redis(host=host, port=port), TEST_ACCOUNT_SID)
    try:
        assert await store.detect_cluster()
        yield store
    finally:
        await store.close()


async def test_webhooks_are_delivered_from_every_master(
    redis_cluster: ClusterProcesses, receiver: Receiver
) -> None:
    url = receiver.url("/cluster")
    failures = {"left": 5}

    def first_ones_fail(received: Received) -> int:
        if failures["left"] > 0:  # a few failures: the backlog and its drain run on the cluster too
            failures["left"] -= 1
            return 503
        return 200

    receiver.answer(first_ones_fail)
    async with cluster_store(redis_cluster) as store:
        service = (await store.create_service({"webhook_url": url})).sid
        client = Principal.client("carol", service).on_endpoint("EP-cluster")
        names = [f"c{i}" for i in range(24)]
        docs = [await store.create_document(client, name, b'{"v":0}', 0) for name in names]
        masters = {redis_cluster.master_of_key(keys.document_key(service, d.sid)).port for d in docs}
        assert len(masters) == 3
        for v in (1, 2):
            for name in names:
                await store.write_document(client, name, data=b'{"v":%d}' % v)
        sender = Sender(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, timeout=5, concurrency=4)
        outbox = RedisOutbox(store, "cluster-deliverer")
        assert not outbox.multi_key_reads
        deliverer = Deliverer(outbox, sender, RetryPolicy(0.05, 0.2, 60), lease=2)
        deliverer.start()
        try:
            await receiver.wait_for(
                lambda r: len({x.token for x in r.delivered("/cluster")}) == len(names) * 3
            )
        finally:
            await deliverer.stop(1.0)
            await outbox.aclose()
    delivered = receiver.delivered("/cluster")
    assert all(valid_signature(url, r) for r in delivered)
    for name in names:
        mine = [r.params["DocumentRevision"] for r in delivered if r.params["DocumentUniqueName"] == name]
        assert mine == sorted(mine, key=int)
        assert set(mine) == {"0", "1", "2"}
    assert failures["left"] == 0
