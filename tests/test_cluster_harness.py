"""The Redis Cluster harness itself (tests/support/cluster.py): it forms a real 3 + 3 cluster, routes keys
as the cluster does, and a SIGKILLed master is failed over to its replica, after which writes work again.
"""

from __future__ import annotations

import itertools
import time

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from tests.support.cluster import CLUSTER_SLOTS, ClusterProcesses, ReplyError


def test_cluster_forms_with_three_replicated_masters(redis_cluster: ClusterProcesses) -> None:
    masters = redis_cluster.masters()
    replicas = redis_cluster.replicas()
    assert len(masters) == 3
    assert len(replicas) == 3
    assert {n.port for n in masters}.isdisjoint(n.port for n in replicas)
    # Each master has exactly one replica, and the masters split the slots between them.
    assert sorted(len(redis_cluster.replicas_of(m)) for m in masters) == [1, 1, 1]
    served = sorted(r for m in masters for v in m.cluster_nodes() if "myself" in v.flags for r in v.slots)
    assert served[0][0] == 0
    assert served[-1][1] == CLUSTER_SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(served))
    for node in redis_cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(CLUSTER_SLOTS)
        assert info["cluster_known_nodes"] == "6"
        assert info["cluster_size"] == "3"
    for replica in replicas:
        replication = replica.info("replication")
        assert replication["role"] == "slave"
        assert replication["master_link_status"] == "up"
        assert int(replication["master_port"]) in {m.port for m in masters}


def test_a_key_lives_on_the_master_of_its_keyslot(redis_cluster: ClusterProcesses) -> None:
    keys = [f"harness:{{tag{n}}}:k" for n in range(12)]
    owners = set()
    for key in keys:
        slot = redis_cluster.key_slot(key)
        assert slot == key_slot(key.encode())  # the client-side hash agrees with the server's
        owner = redis_cluster.master_of_key(key)
        owners.add(owner.port)
        assert owner.command("SET", key, "v") == b"OK"
        assert owner.command("GET", key) == b"v"
        for other in redis_cluster.masters():
            if other is not owner:
                with pytest.raises(ReplyError, match=f"MOVED {slot} 127.0.0.1:{owner.port}$"):
                    other.command("GET", key)
        owner.command("DEL", key)
    assert len(owners) == 3  # twelve tags reach every master


async def test_a_sigkilled_master_fails_over_and_writes_work_again(healthy_cluster: ClusterProcesses) -> None:
    cluster = healthy_cluster
    key = "harness:{failover}:counter"
    old = cluster.master_of_key(key)
    (replica,) = cluster.replicas_of(old)
    client = RedisCluster(host="127.0.0.1", port=old.port)
    try:
        assert await client.set(key, "1") is True
        sha = await client.script_load("return redis.call('INCR', KEYS[1])")
        assert await client.evalsha(sha, 1, key) == 2
        # The write has reached the replica before the crash, so the failover loses nothing.
        assert old.command("WAIT", 1, 2000) == 1

        cluster.kill(old)
        promoted = cluster.wait_failover(old, timeout=10.0)
        assert promoted is replica
        assert cluster.failover_seconds is not None
        assert cluster.failover_seconds < 10.0
        assert promoted.info("replication")["role"] == "master"
        assert cluster.master_of_key(key) is promoted

        # Through a cluster client that still believes in the old master: it reroutes by itself.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                value = await client.incr(key)
                break
            except RedisConnectionError:
                assert time.monotonic() < deadline
        assert value == 3
        # The promoted replica never saw SCRIPT LOAD: EVALSHA answers NOSCRIPT, so keep an EVAL fallback.
        with pytest.raises(NoScriptError):
            await client.evalsha(sha, 1, key)
        assert await client.eval("return redis.call('INCR', KEYS[1])", 1, key) == 4
    finally:
        await client.aclose()

    # The killed master comes back as a replica of the node that replaced it.
    cluster.restart(old)
    cluster.wait_healthy(timeout=20.0)
    assert cluster.replicas_of(promoted) == [old]
    assert old.info("replication")["master_link_status"] == "up"


def test_a_slot_moves_with_its_keys_and_redirects_ask_then_moved(redis_cluster: ClusterProcesses) -> None:
    key = "harness:{moving}:doc"
    slot = redis_cluster.key_slot(key)
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    assert source.command("SET", key, "v") == b"OK"

    assert redis_cluster.begin_migration(slot, target) is source
    assert source.command("GET", key) == b"v"  # still there: the source serves it
    assert redis_cluster.move_keys(slot, source, target) == 1
    # The key left: the source sends the client to the target for this one command.
    with pytest.raises(ReplyError, match=f"^node {source.port}: ASK {slot} 127.0.0.1:{target.port}$"):
        source.command("GET", key)
    redis_cluster.finish_migration(slot, source, target)
    with pytest.raises(ReplyError, match=f"^node {source.port}: MOVED {slot} 127.0.0.1:{target.port}$"):
        source.command("GET", key)
    assert redis_cluster.master_of_slot(slot) is target
    assert target.command("GET", key) == b"v"

    # And back, so the session's cluster keeps its even layout.
    assert redis_cluster.migrate_slot(slot, source) == 1
    assert redis_cluster.master_of_key(key) is source
    assert source.command("DEL", key) == 1
    redis_cluster.wait_healthy(timeout=10.0)


def test_a_manual_failover_hands_the_slots_to_the_replica_without_loss(
    healthy_cluster: ClusterProcesses,
) -> None:
    cluster = healthy_cluster
    key = "harness:{handover}:doc"
    old = cluster.master_of_key(key)
    (replica,) = cluster.replicas_of(old)
    assert old.command("SET", key, "kept") == b"OK"

    assert cluster.manual_failover(old) is replica
    assert cluster.master_of_key(key) is replica
    assert replica.command("GET", key) == b"kept"  # a graceful hand-over loses no acknowledged write
    assert cluster.replicas_of(replica) == [old]

    assert cluster.manual_failover(replica) is old  # and back
    assert old.command("DEL", key) == 1
    cluster.wait_healthy(timeout=10.0)
