"""What ``/healthz`` says about the store: one ``INFO memory`` per master, plus what recent replies said.

On a single Redis that is one round trip. On a Redis Cluster the slot map is read again first (one
``CLUSTER SLOTS``), so that a failover shows as soon as the cluster has promoted a replica, then
every master is asked at once: the store is ``ok`` only when every master answers and none is out
of memory, since a document lives on exactly one master and a master that cannot be reached or is
full fails the requests for its share of every service. ``degraded`` names the node.

Out of memory is judged from INFO (used memory over ``maxmemory``, with a policy that does not
evict, or one that could not evict enough: an OOM reply seen lately), so ``/healthz`` turns ok as
soon as memory is freed or ``maxmemory`` raised. The other conditions cannot be read as cheaply and
are reported while a reply showing them is recent (``conditions.HEALTH_WINDOW``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server.store.cluster_client import ClusterRouter
from sync_server.store.conditions import CONDITIONS, ConditionLog, condition_of
from sync_server.store.multiplex import MultiplexedRedis

UNREACHABLE = "Redis is unreachable"


@dataclass(frozen=True, slots=True)
class Health:
    """``ok``, ``degraded`` (Redis answers but refuses some work) or ``unavailable`` (Redis cannot
    be reached), with the reason."""

    status: Literal["ok", "degraded", "unavailable"]
    detail: str | None = None


Memory = dict[str, str] | None
"""A node's ``INFO memory`` fields, or None where INFO is not allowed."""


async def check(connection: MultiplexedRedis | ClusterRouter, conditions: ConditionLog) -> Health:
    """The store's health, read through the scripts' ``connection`` (see the module docstring)."""
    if isinstance(connection, ClusterRouter):
        try:
            await connection.refresh()
        except (RedisError, OSError):
            return Health("unavailable", UNREACHABLE)
        if not connection.serves_every_slot():
            return Health("degraded", CONDITIONS["CLUSTERDOWN"].detail)
        nodes = {_name(node): node for node in connection.masters()}
    else:
        nodes = {"": connection}
    replies = await _each(list(nodes.values()))
    memories: dict[str, Memory] = {}
    unreachable: list[str] = []
    for where, reply in zip(nodes, replies, strict=True):
        condition = condition_of(reply) if isinstance(reply, RedisError) else None
        if condition is not None:
            return Health("degraded", condition.detail + where)
        if isinstance(reply, RedisConnectionError | RedisTimeoutError | OSError):
            unreachable.append(where)
        elif isinstance(reply, BaseException):
            raise reply
        else:
            memories[where] = reply
    if unreachable:
        if len(unreachable) == len(nodes):
            return Health("unavailable", UNREACHABLE)
        return Health("degraded", UNREACHABLE + unreachable[0])
    return _judged(memories, conditions)


def _judged(memories: dict[str, Memory], conditions: ConditionLog) -> Health:
    """Every node answered: out of memory by INFO (or by replies, without INFO), then the rest."""
    conditions.answered()
    recent = conditions.recent()
    oom_seen = CONDITIONS["OOM"] in recent
    for where, memory in memories.items():
        if _out_of_memory(memory, oom_seen=oom_seen) if memory is not None else oom_seen:
            return Health("degraded", CONDITIONS["OOM"].detail + where)
    conditions.clear("OOM")
    others = [condition for condition in recent if condition.word != "OOM"]
    if others:
        return Health("degraded", others[0].detail)
    return Health("ok")


async def _each(nodes: list[MultiplexedRedis]) -> list[Memory | BaseException]:
    """Every node's ``INFO memory`` (or its error), all at once. A single node is awaited directly:
    a task per call would cost event-loop turns, which a loop busy with other clients makes slow."""
    if len(nodes) == 1:
        try:
            return [await _memory_info(nodes[0])]
        except Exception as exc:  # classified by the caller, as gather's return_exceptions would
            return [exc]
    return await asyncio.gather(*(_memory_info(node) for node in nodes), return_exceptions=True)


async def _memory_info(node: MultiplexedRedis) -> Memory:
    """``INFO memory``, or None (after a PING) where INFO is not allowed: it is in the ACL category
    ``@dangerous``, which restricted users of hosted Redis often lack."""
    try:
        reply = await node.execute("INFO", "memory")
    except ResponseError as exc:
        if condition_of(exc) is not None:
            raise
        await node.execute("PING")
        return None
    return info_fields(reply)


def info_fields(reply: bytes | str) -> dict[str, str]:
    """The ``name:value`` lines of an ``INFO`` reply."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            fields[name] = value.strip()
    return fields


def _out_of_memory(memory: dict[str, str], *, oom_seen: bool) -> bool:
    limit = int(memory.get("maxmemory", 0) or 0)
    if limit <= 0 or int(memory.get("used_memory", 0) or 0) < limit:
        return False
    # Under an evicting policy Redis makes room itself, unless there is nothing it may evict.
    return memory.get("maxmemory_policy") == "noeviction" or oom_seen


def _name(node: MultiplexedRedis) -> str:
    address = node.address
    return "" if address is None else f" (cluster master {address[0]}:{address[1]})"
