"""A listener on a Redis Cluster's sharded channels, for tests that count events at the source.

One raw connection per master, and one ``SSUBSCRIBE`` per channel on the master that serves its slot
(a sharded subscription lives on the node of its slot, and one ``SSUBSCRIBE`` may not span slots).
Messages are kept per channel, decoded as the scripts publish them: a JSON header, then for
``updated`` a newline and the data (``sync_server/events.py``). A listener knows nothing of failovers:
use it on a healthy cluster.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import hiredis

from sync_server.store.multiplex import pack_command
from tests.support.cluster import HOST, ClusterProcesses
from tests.support.realtime import eventually

__all__ = ["ShardedListener"]


class ShardedListener:
    def __init__(self, cluster: ClusterProcesses) -> None:
        self.cluster = cluster
        self.events: collections.defaultdict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        """Channel -> the JSON headers of the messages received on it, in order."""
        self._streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._confirmed: collections.Counter[int] = collections.Counter()

    async def subscribe(self, channels: list[str]) -> None:
        """Subscribes to every channel and returns once each master has confirmed its share (wrap it
        in ``asyncio.timeout`` to bound the wait)."""
        wanted: collections.Counter[int] = collections.Counter()
        for channel in channels:
            port = self.cluster.master_of_key(channel).port
            if port not in self._streams:
                self._streams[port] = await asyncio.open_connection(HOST, port)
                self._readers.append(asyncio.create_task(self._read(port)))
            self._streams[port][1].write(pack_command(("SSUBSCRIBE", channel)))
            wanted[port] += 1
        await eventually(lambda: all(self._confirmed[port] >= n for port, n in wanted.items()))
        self._confirmed.subtract(wanted)

    async def _read(self, port: int) -> None:
        reader = hiredis.Reader()
        stream = self._streams[port][0]
        while chunk := await stream.read(65536):
            reader.feed(chunk)
            while (message := reader.gets()) is not False:
                kind, channel, payload = message
                if kind == b"ssubscribe":
                    self._confirmed[port] += 1
                elif kind == b"smessage":
                    self.events[channel.decode()].append(json.loads(payload.split(b"\n", 1)[0]))

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        for _, writer in self._streams.values():
            writer.close()
        await asyncio.gather(*self._readers, return_exceptions=True)
