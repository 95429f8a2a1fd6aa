"""The Lua scripts of ``lua/``, loaded once and run by SHA (EVALSHA, with EVAL on NOSCRIPT).

Each ``lua/<name>.lua`` is prefixed with ``lua/_prelude.lua`` (helpers shared by all scripts) when it
is read; the combined source is what Redis caches under its SHA1.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from sync_server.store.cluster_client import ClusterRouter, connect_store
from sync_server.store.multiplex import DEFAULT_TIMEOUT, MultiplexedRedis, params_from_pool

_PRELUDE = "_prelude.lua"


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: bytes
    sha: str


def load_scripts() -> dict[str, LuaScript]:
    """Reads every script of ``lua/`` (but the prelude), keyed by file name without ``.lua``."""
    folder = resources.files(__package__).joinpath("lua")
    prelude = folder.joinpath(_PRELUDE).read_bytes()
    scripts: dict[str, LuaScript] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".lua") or entry.name == _PRELUDE:
            continue
        source = prelude + b"\n" + entry.read_bytes()
        name = entry.name.removesuffix(".lua")
        scripts[name] = LuaScript(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())
    return scripts


class ScriptRunner:
    """Runs the scripts: one EVALSHA per call, one round trip, on a multiplexed connection to the
    same Redis as ``redis`` (see multiplex.py for why not through redis-py's pool), or, when that Redis
    is a node of a cluster, on a router to the master of the script's first key (cluster_client.py).
    Which of the two is decided on the first call (``INFO cluster``), so that constructing the store
    needs no round trip and a server started while Redis is down still comes up.

    Every connection loads all the scripts before its first call (``preload``, multiplex.py), so
    EVALSHA finds them on a Redis that restarted or a replica promoted in a failover (each means a
    new connection). That is also what keeps the calls one task chain makes, one after another
    without waiting, applied in that order (the websocket gateway's pipelining relies on it): were
    the first answered NOSCRIPT and repeated, the ones sent behind it would have run before it. Only
    a SCRIPT FLUSH on a live connection still gets NOSCRIPT; the call is then repeated once as
    EVAL, which also re-caches the script.
    """

    def __init__(self, redis: Redis, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """``timeout``: seconds each script may take to answer (``SYNC_REDIS_TIMEOUT``)."""
        self._params = params_from_pool(redis.connection_pool)
        self._timeout = timeout
        self._connection: MultiplexedRedis | ClusterRouter | None = None
        self._connecting: asyncio.Lock | None = None
        self._scripts = load_scripts()

    @property
    def connection(self) -> MultiplexedRedis | ClusterRouter | None:
        """The connection the scripts run on, once the first call has chosen it."""
        return self._connection

    async def connected(self) -> MultiplexedRedis | ClusterRouter:
        """The connection, chosen now if no call has chosen it yet (raises ``CannotConnectError``
        while Redis cannot be reached)."""
        return self._connection or await self._connect()

    async def run(self, name: str, keys: list[str], args: list[str | int | bytes]) -> Any:
        script = self._scripts[name]
        connection = self._connection or await self._connect()
        key = keys[0] if keys else ""
        try:
            return await connection.execute_keyed(key, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await connection.execute_keyed(key, "EVAL", script.source, len(keys), *keys, *args)

    async def command(self, key: str, *args: str | int | bytes) -> Any:
        """One plain command whose first key is ``key``, on the scripts' connection (so that on a cluster
        it reaches the master of ``key``'s slot, as redis-py's single-node client would not)."""
        connection = self._connection or await self._connect()
        return await connection.execute_keyed(key, *args)

    async def _connect(self) -> MultiplexedRedis | ClusterRouter:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None:
                preload = tuple(script.source for script in self._scripts.values())
                self._connection = await connect_store(
                    self._params, command_timeout=self._timeout, preload=preload
                )
            return self._connection

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = None
