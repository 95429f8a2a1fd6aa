"""The Lua scripts of ``lua/``, loaded once and run by SHA (EVALSHA, with EVAL on NOSCRIPT).

Each ``lua/<name>.lua`` is prefixed with ``lua/_prelude.lua`` (helpers shared by all scripts) when it
is read; the combined source is what Redis caches under its SHA1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from sync_server.store.multiplex import MultiplexedRedis

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
    same Redis as ``redis`` (see multiplex.py for why not through redis-py's pool).

    A Redis that lost its script cache (restart, SCRIPT FLUSH, failover) answers NOSCRIPT; the call
    is then repeated once as EVAL, which also re-caches the script.
    """

    def __init__(self, redis: Redis) -> None:
        self._connection = MultiplexedRedis(dict(redis.connection_pool.connection_kwargs))
        self._scripts = load_scripts()

    async def run(self, name: str, keys: list[str], args: list[str | int | bytes]) -> Any:
        script = self._scripts[name]
        try:
            return await self._connection.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._connection.execute("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        await self._connection.aclose()
