"""Helpers shared by the websocket tests (``test_client_*``, ``test_realtime_*``, ``test_gateway_*``).

:class:`Peer` is a raw protocol client on a real websocket — it
keeps every frame in arrival order and filters nothing, so tests see exactly what the server sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sync_client import Backoff, DocumentEvent, EventStream, SyncClient
from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, ServerProcess

BASIC = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
BASIC_HEADER = "Basic " + base64.b64encode(f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}".encode()).decode()
# Generous: two cores shared with other test runs. Nothing waits this long when things work.
WAIT = 20.0


def start_servers(
    directory: Path, redis_url: str, count: int = 2, env: Mapping[str, str] | None = None
) -> list[ServerProcess]:
    """``count`` server processes on one Redis, started in parallel."""
    servers = [ServerProcess(directory / f"server{i}", redis_url=redis_url, env=env) for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(ServerProcess.start, servers))
    return servers


def stop_servers(servers: Iterable[ServerProcess]) -> None:
    """Kills: nothing here needs a graceful stop, and one can stall for its full 15 s timeout (the
    expiry sweeper may miss its cancellation: redis-py 8.1 commands can swallow a task's cancel)."""
    for server in servers:
        server.kill()


def ws_url(server: ServerProcess, **query: str) -> str:
    url = server.base_url.replace("http://", "ws://") + "/ws"
    return url + ("?" + urlencode(query) if query else "")


def documents_url(server: ServerProcess, service: str, doc: str = "") -> str:
    return f"{server.base_url}/v1/Services/{service}/Documents" + (f"/{doc}" if doc else "")


class Peer:
    """A raw protocol client: commands matched to replies by id, events kept in arrival order."""

    def __init__(self, ws: ClientConnection, connected: dict[str, Any]) -> None:
        self.ws = ws
        self.connected = connected
        self.frames: list[dict[str, Any]] = []
        """Every frame after ``connected``, replies and events, in arrival order."""
        self.arrivals: list[float] = []
        """When each frame was read (``time.time()``), parallel to :attr:`frames`."""
        self._replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, *, headers: Mapping[str, str] | None = None, basic: bool = True) -> Peer:
        all_headers = {"Authorization": BASIC_HEADER} if basic else {}
        all_headers.update(headers or {})
        ws = await connect(url, additional_headers=all_headers, proxy=None, compression=None, max_size=None)
        async with asyncio.timeout(WAIT):
            connected = json.loads(await ws.recv())
        assert connected["event"] == "connected", connected
        return cls(ws, connected)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if "event" in frame]

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                frame = json.loads(message)
                self.frames.append(frame)
                self.arrivals.append(time.time())
                waiter = self._replies.pop(frame.get("id"), None) if "event" not in frame else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                self._changed.set()
        self._changed.set()

    async def send_command(self, op: str, **fields: Any) -> asyncio.Future[dict[str, Any]]:
        """Sends a command and returns the future of its reply (to pipeline several)."""
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = future
        await self.ws.send(json.dumps({"id": self._next_id, "op": op, **fields}))
        return future

    async def command(self, op: str, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            return await (await self.send_command(op, **fields))

    async def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = await self.command(op, **fields)
        assert reply["ok"] is True, reply
        return reply

    async def wait_until(self, condition: Callable[[Peer], bool], within: float = WAIT) -> None:
        """Waits until ``condition(self)`` holds, re-checking after every frame."""
        async with asyncio.timeout(within):
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, within: float = WAIT) -> int | None:
        async with asyncio.timeout(within):
            await self._reader
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await self._reader


async def connect_peers(url: str, count: int) -> list[Peer]:
    return list(await asyncio.gather(*(Peer.connect(url) for _ in range(count))))


async def close_all(peers: Iterable[Peer]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers))


# Reconnect quickly in tests: servers restart in well under a second.
FAST_BACKOFF = Backoff(initial=0.05, maximum=0.5)


def basic_client(server: ServerProcess, service: str, **kwargs: Any) -> SyncClient:
    """A :class:`SyncClient` with the test account's Basic credentials on ``service``."""
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("connect_timeout", WAIT)
    return SyncClient(server.base_url, basic=BASIC, service=service, **kwargs)


async def next_event(stream: EventStream, within: float = WAIT) -> DocumentEvent:
    async with asyncio.timeout(within):
        return await anext(stream)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = WAIT) -> None:
    """Waits until ``condition()`` holds, polling: for state that changes without a notification."""
    async with asyncio.timeout(within):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)
