"""A webhook receiver for the benchmark: ``python -m bench.webhook_receiver --port P``.

Plain asyncio HTTP/1.1 with keep-alive, as little work per request as an HTTP server can do in Python,
so that it is not what limits delivery. Every ``POST`` is answered 200 and counted, with its arrival
time and, when ``DocumentData`` holds a number ``t`` (the writer's ``time.time()``), the latency from
the write. ``GET /stats`` answers the counts and latencies as JSON; ``POST /reset`` forgets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.latencies_ms: list[float] = []

    def add(self, body: bytes) -> None:
        now = time.time()
        self.count += 1
        self.first = now if self.first is None else self.first
        self.last = now
        if b"%22t%22" in body or b'"t"' in body:
            data = parse_qs(body.decode()).get("DocumentData", ["{}"])[0]
            t = json.loads(data).get("t")
            if isinstance(t, int | float):
                self.latencies_ms.append((now - t) * 1000)

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "latencies_ms": self.latencies_ms,
        }


async def serve(port: int) -> None:
    stats = Stats()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines:
                    if line[:15].lower() == "content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                method, target = request_line.split(" ")[:2]
                if method == "GET" and target == "/stats":
                    payload = json.dumps(stats.as_json()).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                elif target == "/reset":
                    stats.reset()
                    writer.write(_OK)
                else:
                    stats.add(body)
                    writer.write(_OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
