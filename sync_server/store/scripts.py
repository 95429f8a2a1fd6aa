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
    """Runs the scripts on one Redis client: one EVALSHA per call, one round trip.

    A Redis that lost its script cache (restart, SCRIPT FLUSH, failover) answers NOSCRIPT; the call
    is then repeated once as EVAL, which also re-caches the script.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts = load_scripts()

    async def run(self, name: str, keys: list[str], args: list[str | int | bytes]) -> Any:
        script = self._scripts[name]
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._redis.eval(script.source.decode(), len(keys), *keys, *args)
