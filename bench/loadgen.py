"""A small REST load generator, used only when ``wrk`` is not installed.

Same workload and output as ``wrk/write.lua``: ``CONNECTIONS`` persistent keep-alive connections,
each sending one request at a time; in ``ifmatch`` mode connection *i* owns the documents
``n % CONNECTIONS == i`` and sends the revision its last response returned. It costs the machine more
CPU per request than wrk, so numbers from it are lower; the runner records which generator ran.

    python -m bench.loadgen --port P --mode set --prefix u --count 1000 --auth B64 --body FILE \
        --connections 64 --seconds 10 [--service SID]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field

REVISION = re.compile(rb'"revision":"([0-9a-f]+)"')


@dataclass
class Totals:
    latencies: list[float] = field(default_factory=list)
    non_2xx: int = 0
    socket_errors: int = 0
    bad: int = 0


def request_bytes(port: int, path: str, auth: str, body: bytes, if_match: str | None) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    )
    if if_match is not None:
        head += f"If-Match: {if_match}\r\n"
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def connection(
    args: argparse.Namespace, index: int, body: bytes, deadline: float, totals: Totals
) -> None:
    owned = [n for n in range(args.count) if args.count == 1 or n % args.connections == index] or [
        index % args.count
    ]
    paths = {n: f"/v1/Services/{args.service}/Documents/{args.prefix}{n:012d}" for n in owned}
    revisions = dict.fromkeys(owned, "0")
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    turn = 0
    try:
        while time.monotonic() < deadline:
            n = owned[turn % len(owned)]
            turn += 1
            if_match = revisions[n] if args.mode == "ifmatch" else None
            started = time.perf_counter()
            writer.write(request_bytes(args.port, paths[n], args.auth, body, if_match))
            status, response = await read_response(reader)
            totals.latencies.append(time.perf_counter() - started)
            if not 200 <= status < 300:
                totals.non_2xx += 1
            if args.mode == "ifmatch":
                found = REVISION.search(response)
                if status != 200 or found is None:
                    totals.bad += 1
                else:
                    revisions[n] = found.group(1).decode()
    except (OSError, asyncio.IncompleteReadError):
        totals.socket_errors += 1
    finally:
        writer.close()


async def main(args: argparse.Namespace, body: bytes) -> dict[str, int]:
    totals = Totals()
    started = time.monotonic()
    deadline = started + args.seconds
    await asyncio.gather(*(connection(args, i, body, deadline, totals) for i in range(args.connections)))
    duration = time.monotonic() - started
    ordered = sorted(totals.latencies) or [0.0]

    def quantile(p: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e6)

    return {
        "requests": len(totals.latencies),
        "duration_us": int(duration * 1e6),
        "p50_us": quantile(0.5),
        "p90_us": quantile(0.9),
        "p99_us": quantile(0.99),
        "max_us": int(ordered[-1] * 1e6),
        "non_2xx": totals.non_2xx,
        "socket_errors": totals.socket_errors,
        "timeouts": 0,
        "bad": totals.bad,
        "starved": 0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="REST write load (the fallback for wrk)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("set", "ifmatch"), default="set")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--auth", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--service", default="default", help="the service's SID")
    import uvloop

    arguments = parser.parse_args()
    with open(arguments.body, "rb") as file:
        form = file.read()
    print("WRK_JSON " + json.dumps(uvloop.run(main(arguments, form))))
