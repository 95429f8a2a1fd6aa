"""Webhook scenario: what webhooks cost REST writes, and how fast and how soon they arrive.

One server (``--workers 1``) on the run's Redis, one receiver process (``webhook_receiver.py``):

- REST writes/s on the default service without a webhook, then the same load with the service's
  ``WebhookUrl`` set (``WebhooksFromRestEnabled``) and the receiver healthy, delivered by the serving
  process meanwhile: the outbox append plus the delivery's CPU, on the same two cores;
- the same pair of loads (without, then with the webhook) on a process that does not deliver
  (``SYNC_WEBHOOKS=off``): the write path's own cost, the append in the write script, measured
  against its own run without; then a second process starts delivering the backlog that
  load left, alone: its delivery throughput, first to last arrival. Next to it, the ceiling of httpx
  itself on the box at that moment: as many plain posts to the same receiver, as many at once, on
  one-connection clients as the sender uses;
- latency: paced writes (``paced_rate`` per second) carrying the writer's clock, and the receiver's
  arrival time minus it: p50 / p99 from write to webhook while the receiver is healthy.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import procs
from bench.fleet_process import BenchError
from bench.rest import RestPlan, auth_b64, create_documents, load, write_body
from sync_server.embedded import RedisProcess


@dataclass(frozen=True)
class WebhookPlan:
    rest: RestPlan
    paced_rate: int = 200
    paced_seconds: float = 5.0
    drain_timeout: float = 120.0
    separate: bool = True
    """Also measure with delivery in a second process (two more server starts)."""


def receiver(workdir: Path) -> procs.Managed:
    port = procs.free_port()
    command = [procs.PYTHON, "-m", "bench.webhook_receiver", "--port", str(port)]
    return procs.Managed("webhook-receiver", command, workdir, port=port)


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
        found: dict[str, Any] = json.loads(response.read())
        return found


def reset(port: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


def wait_count(port: int, count: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = stats(port)
        if found["count"] >= count:
            return found
        if time.monotonic() > deadline:
            raise BenchError(f"webhooks: {found['count']} of {count} arrived within {timeout:g}s")
        time.sleep(0.2)


def paced_writes(port: int, prefix: str, documents: int, rate: int, seconds: float) -> int:
    """Writes at ``rate`` per second, each carrying the writer's clock as ``t``; returns how many."""
    headers = {"Authorization": "Basic " + auth_b64(), "Content-Type": "application/x-www-form-urlencoded"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    total = int(rate * seconds)
    started = time.monotonic()
    for n in range(total):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = "Data=" + quote(json.dumps({"t": time.time(), "n": n}), safe="")
        conn.request("POST", f"/v1/Services/default/Documents/{prefix}{n % documents:012d}", body, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise BenchError(f"paced write {n}: HTTP {response.status}")
    conn.close()
    return total


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def warm_up(port: int, plan: WebhookPlan, workdir: Path) -> None:
    """Two seconds of the load first, as the REST scenario's document creation does (not in smoke runs)."""
    if plan.rest.seconds >= 4:
        load(port, "set", "wh", plan.rest.documents, replace(plan.rest, seconds=2.0), workdir)


def run_webhooks(redis: RedisProcess, plan: WebhookPlan, workdir: Path) -> dict[str, Any]:
    hook = receiver(workdir / "webhook-receiver").start()
    assert hook.port is not None
    try:
        found = _same_process(redis, plan, workdir, hook.port)
        if plan.separate:
            separate = found["with_webhook_separate"] = _separate_process(redis, plan, workdir, hook.port)
            found["separate_writes_ratio"] = round(
                separate["writes_per_s"] / separate["without_webhook"]["writes_per_s"], 3
            )
        return found
    finally:
        hook.stop()


def _separate_process(redis: RedisProcess, plan: WebhookPlan, workdir: Path, port: int) -> dict[str, Any]:
    rest = plan.rest
    serving = procs.SyncServer(workdir / "webhooks-serving", redis.url, env={"SYNC_WEBHOOKS": "off"}).start()
    try:
        procs.rest_call(serving.port, "POST", "/v1/Services/default", {"WebhookUrl": ""})
        warm_up(serving.port, plan, workdir)
        without = load(serving.port, "set", "wh", rest.documents, rest, workdir)
        webhook = {"WebhookUrl": f"http://127.0.0.1:{port}/hook", "WebhooksFromRestEnabled": "true"}
        procs.rest_call(serving.port, "POST", "/v1/Services/default", webhook)
        reset(port)
        result = load(serving.port, "set", "wh", rest.documents, rest, workdir)
    finally:
        serving.stop()
    delivering = procs.SyncServer(workdir / "webhooks-delivering", redis.url).start()
    try:
        drained = wait_count(port, result["requests"], plan.drain_timeout)
    finally:
        delivering.stop()
    span = (drained["last"] - drained["first"]) or 1e-9
    reset(port)
    ceiling = httpx_ceiling(port, min(result["requests"], 5000), concurrency=16)
    return {
        **result,
        "without_webhook": without,
        "drained_per_s": round(drained["count"] / span),
        "httpx_ceiling_per_s": ceiling,
    }


def httpx_ceiling(port: int, count: int, concurrency: int) -> int:
    """Posts per second of plain httpx to the receiver: ``count`` form posts, ``concurrency`` at once,
    each lane on its own one-connection client (as webhooks/sender.py does)."""
    import asyncio

    import httpx

    body = b"AccountSid=AC&EventType=document_updated&DocumentData=%7B%7D"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    async def lane(client: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            response = await client.post(f"http://127.0.0.1:{port}/ceiling", content=body, headers=headers)
            if response.status_code != 200:
                raise BenchError(f"httpx ceiling: HTTP {response.status_code}")

    async def run() -> float:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        clients = [httpx.AsyncClient(limits=limits) for _ in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(lane(c, count // concurrency) for c in clients))
        elapsed = time.perf_counter() - started
        for client in clients:
            await client.aclose()
        return elapsed

    return round(count // concurrency * concurrency / asyncio.run(run()))


def _same_process(redis: RedisProcess, plan: WebhookPlan, workdir: Path, port: int) -> dict[str, Any]:
    server = procs.SyncServer(workdir / "webhooks", redis.url).start()
    try:
        rest = plan.rest
        write_body(workdir)
        create_documents(server.port, "wh", rest.documents)
        warm_up(server.port, plan, workdir)
        without = load(server.port, "set", "wh", rest.documents, rest, workdir)
        url = f"http://127.0.0.1:{port}/hook"
        procs.rest_call(
            server.port,
            "POST",
            "/v1/Services/default",
            {"WebhookUrl": url, "WebhooksFromRestEnabled": "true"},
        )
        reset(port)
        with_webhook = load(server.port, "set", "wh", rest.documents, rest, workdir)
        delivered = wait_count(port, with_webhook["requests"], plan.drain_timeout)
        span = (delivered["last"] - delivered["first"]) or 1e-9
        reset(port)
        sent = paced_writes(server.port, "wh", rest.documents, plan.paced_rate, plan.paced_seconds)
        paced = wait_count(port, sent, plan.drain_timeout)
        latencies = paced["latencies_ms"]
    finally:
        server.stop()
    return {
        "without_webhook": without,
        "with_webhook": with_webhook,
        "writes_ratio": round(with_webhook["writes_per_s"] / without["writes_per_s"], 3),
        "delivered": delivered["count"],
        "delivered_per_s": round(delivered["count"] / span),
        "paced": {
            "rate": plan.paced_rate,
            "webhooks": paced["count"],
            "latency_ms": {
                "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99),
                "max": max(latencies) if latencies else None,
            },
        },
    }
