"""``/metrics`` of real server processes, scraped with prometheus-client's own parser after real
traffic: the counters move by exactly what the traffic did, one worker or two (multiprocess mode,
where any worker's scrape shows the sums), and the endpoint asks for credentials as configured.

Counters are compared as differences between two scrapes, so the order of the tests does not matter.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.embedded import RedisProcess
from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    ServerProcess,
    start_redis,
)
from tests.support.realtime import (
    BASIC,
    WAIT,
    Peer,
    close_all,
    connect_peers,
    documents_url,
    eventually,
    ws_url,
)

DOCUMENT_ROUTE = "/v1/Services/{ServiceSid}/Documents/{Sid}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess, *, auth: tuple[str, str] | None = None) -> Samples:
    # A new connection each time: with several workers, any of them may answer.
    response = httpx.get(f"{server.base_url}/metrics", auth=auth, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def new_service(server: ServerProcess, *, acl: bool = False) -> str:
    response = httpx.post(f"{server.base_url}/v1/Services", data={"AclEnabled": str(acl).lower()}, auth=BASIC)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    # Of this module alone: other servers on the session's Redis would sweep its expired documents.
    proc = start_redis(tmp_path_factory.mktemp("metrics-redis"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def server(own_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("metrics"), redis_url=own_redis.url).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as client:
        yield client


async def test_writes_deliveries_connections_and_routes_are_counted(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    service = new_service(server)
    created = await http.post(documents_url(server, service), data={"UniqueName": "counted", "Data": "{}"})
    assert created.status_code == 201
    peers = await connect_peers(ws_url(server, service=service), 3)
    try:
        for peer in peers:
            await peer.ok("subscribe", doc="counted")
        before = scrape(server)
        assert value(before, "sync_ws_connections_open", protocol="native") == 3
        assert value(before, "sync_subscriptions_open") == 3
        assert value(before, "sync_hub_channels") == 1

        for i in range(20):
            response = await http.post(
                documents_url(server, service, "counted"), data={"Data": json.dumps({"i": i})}
            )
            assert response.status_code == 200, response.text
        for peer in peers:
            await peer.wait_until(lambda p: len([e for e in p.events if e["event"] == "updated"]) == 20)
        after = scrape(server)
    finally:
        await close_all(peers)

    # REST's update with Data replaces the data: kind "set" (the socket "update" merges).
    assert moved(before, after, "sync_document_writes_total", kind="set", result="ok") == 20
    assert moved(before, after, "sync_document_writes_total", kind="update", result="ok") == 0
    assert moved(before, after, "sync_events_delivered_total", protocol="native") == 60
    assert moved(before, after, "sync_events_delivered_total", protocol="twilsock") == 0
    route = {"route": DOCUMENT_ROUTE, "method": "POST"}
    assert moved(before, after, "sync_http_requests_total", **route, status="200") == 20
    assert moved(before, after, "sync_http_request_duration_seconds_count", **route) == 20
    assert moved(before, after, "sync_http_request_duration_seconds_sum", **route) > 0
    # The scrape before this one was counted too, under its own route.
    assert moved(before, after, "sync_http_requests_total", route="/metrics", method="GET", status="200") == 1

    def all_closed() -> bool:
        now = scrape(server)
        return (
            value(now, "sync_ws_connections_open", protocol="native"),
            value(now, "sync_subscriptions_open"),
            value(now, "sync_hub_channels"),
        ) == (0, 0, 0)

    await eventually(all_closed)


async def test_failed_writes_are_counted_by_result(server: ServerProcess, http: httpx.AsyncClient) -> None:
    service = new_service(server)
    url = documents_url(server, service, "failing")
    assert (
        await http.post(documents_url(server, service), data={"UniqueName": "failing"})
    ).status_code == 201
    before = scrape(server)
    mismatch = await http.post(url, data={"Data": "{}"}, headers={"If-Match": "7"})
    assert (mismatch.status_code, mismatch.json()["code"]) == (412, 54103)
    missing = await http.post(documents_url(server, service, "nowhere"), data={"Data": "{}"})
    assert (missing.status_code, missing.json()["code"]) == (404, 20404)
    invalid = await http.post(url, data={"Data": "[1]"})
    assert invalid.status_code == 400
    assert (await http.post(url, data={"Ttl": "600"})).status_code == 200
    assert (await http.delete(url)).status_code == 204
    assert (await http.delete(url)).status_code == 404
    after = scrape(server)

    writes = "sync_document_writes_total"
    assert moved(before, after, writes, kind="set", result="precondition_failed") == 1
    assert moved(before, after, writes, kind="set", result="not_found") == 1
    assert moved(before, after, writes, kind="set", result="error") == 1
    assert moved(before, after, writes, kind="set", result="ok") == 0
    assert moved(before, after, writes, kind="set_ttl", result="ok") == 1
    assert moved(before, after, writes, kind="remove", result="ok") == 1
    assert moved(before, after, writes, kind="remove", result="not_found") == 1
    requests = "sync_http_requests_total"
    assert moved(before, after, requests, route=DOCUMENT_ROUTE, method="POST", status="412") == 1
    assert moved(before, after, requests, route=DOCUMENT_ROUTE, method="POST", status="404") == 1
    assert moved(before, after, requests, route=DOCUMENT_ROUTE, method="DELETE", status="204") == 1


async def test_acl_refusals_and_token_refusals_are_counted(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    service = new_service(server, acl=True)
    assert (
        await http.post(documents_url(server, service), data={"UniqueName": "guarded"})
    ).status_code == 201
    token = mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, "stranger", service)
    before = scrape(server)
    peer = await Peer.connect(ws_url(server, token=token), basic=False)
    try:
        reply = await peer.command("update", doc="guarded", data={"x": 1})
        assert (reply["ok"], reply["error"]["code"]) == (False, 54007)
        assert value(scrape(server), "sync_ws_connections_open", protocol="native") == 1
    finally:
        await peer.close()
    async with connect(ws_url(server, token="not-a-token"), proxy=None) as refused:
        await refused.wait_closed()
        assert refused.close_code == 4401, refused.close_code
    after = scrape(server)

    assert moved(before, after, "sync_document_writes_total", kind="update", result="forbidden") == 1
    assert moved(before, after, "sync_token_refusals_total", code="20101") == 1


def metrics_dirs(server: ServerProcess) -> set[str]:
    """The ``PROMETHEUS_MULTIPROC_DIR`` of each of the server's worker processes."""
    assert server.pid is not None
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    found = set()
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        found |= {v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")}
    return found


def exists(directory: str) -> bool:
    return Path(directory).is_dir()


async def test_two_workers_scrape_as_one_server(redis_proc: RedisProcess, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, redis_url=redis_proc.url, workers=2)
    with server:
        # One directory for the run, made by the CLI for its workers, removed when it stops.
        (directory,) = metrics_dirs(server)
        assert exists(directory)
        service = new_service(server)
        async with httpx.AsyncClient(auth=BASIC, timeout=WAIT) as http:
            created = await http.post(documents_url(server, service), data={"UniqueName": "shared"})
            assert created.status_code == 201
        # Connections spread over the workers: each one is accepted by whichever worker is waiting.
        peers = [await Peer.connect(ws_url(server, service=service)) for _ in range(6)]
        try:
            for peer in peers:
                await peer.ok("subscribe", doc="shared")
            before = scrape(server)
            assert value(before, "sync_ws_connections_open", protocol="native") == 6
            # A new connection per write (no keep-alive), so that both workers serve some.
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(auth=BASIC, timeout=WAIT, limits=fresh) as http:
                for i in range(20):
                    response = await http.post(
                        documents_url(server, service, "shared"), data={"Data": json.dumps({"i": i})}
                    )
                    assert response.status_code == 200, response.text
            for peer in peers:
                await peer.wait_until(lambda p: len([e for e in p.events if e["event"] == "updated"]) == 20)
            # Every scrape, whichever worker answers it, shows the totals of both.
            scrapes = [scrape(server) for _ in range(8)]
        finally:
            await close_all(peers)
        for after in scrapes:
            workers = {
                dict(labels)["pid"] for name, labels in after if name == "sync_worker_start_time_seconds"
            }
            assert len(workers) == 2, workers
            assert moved(before, after, "sync_document_writes_total", kind="set", result="ok") == 20
            assert moved(before, after, "sync_events_delivered_total", protocol="native") == 120
            assert value(after, "sync_ws_connections_open", protocol="native") == 6
            assert value(after, "sync_subscriptions_open") == 6
            assert (
                moved(
                    before,
                    after,
                    "sync_http_requests_total",
                    route=DOCUMENT_ROUTE,
                    method="POST",
                    status="200",
                )
                == 20
            )
    assert not exists(directory)


@pytest.mark.parametrize(
    ("setting", "host", "needs_credentials"),
    [
        ("auto", "127.0.0.1", False),
        ("auto", "::1", False),
        ("auto", "0.0.0.0", True),
        ("auto", "10.1.2.3", True),
        ("always", "127.0.0.1", True),
        ("never", "0.0.0.0", False),
    ],
)
async def test_metrics_credentials_follow_the_setting(
    settings: Settings, setting: str, host: str, needs_credentials: bool
) -> None:
    app = create_app(replace(settings, metrics_auth=setting, host=host))  # type: ignore[arg-type]
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            anonymous = await client.get("/metrics")
            wrong = await client.get("/metrics", auth=(TEST_ACCOUNT_SID, "wrong"))
            right = await client.get("/metrics", auth=BASIC)
            key = await client.get("/metrics", auth=(TEST_API_KEY_SID, TEST_API_KEY_SECRET))
    finally:
        await app.state.store.close()
    assert (right.status_code, key.status_code) == (200, 200)
    assert "sync_http_requests_total" in right.text
    if needs_credentials:
        for refused in (anonymous, wrong):
            assert (refused.status_code, refused.json()["code"]) == (401, 20003)
    else:
        assert (anonymous.status_code, wrong.status_code) == (200, 200)


def test_the_setting_comes_from_the_environment() -> None:
    base = {"SYNC_ACCOUNT_SID": TEST_ACCOUNT_SID, "SYNC_AUTH_TOKEN": "x"}
    assert Settings.from_env(base).metrics_need_credentials is False
    assert Settings.from_env({**base, "SYNC_HOST": "0.0.0.0"}).metrics_need_credentials is True
    assert (
        Settings.from_env({**base, "SYNC_HOST": "::", "SYNC_METRICS_AUTH": "never"}).metrics_need_credentials
        is False
    )
    assert Settings.from_env({**base, "SYNC_METRICS_AUTH": "Always"}).metrics_need_credentials is True
    with pytest.raises(ValueError, match="SYNC_METRICS_AUTH"):
        Settings.from_env({**base, "SYNC_METRICS_AUTH": "sometimes"})


def test_a_real_server_beyond_loopback_asks_for_credentials(redis_proc: RedisProcess, tmp_path: Path) -> None:
    # Listening on every address: /metrics is no longer public (reached here over loopback all the same).
    with ServerProcess(tmp_path, redis_url=redis_proc.url, args=("--host", "0.0.0.0")) as server:
        anonymous = httpx.get(f"{server.base_url}/metrics")
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, 20003)
        assert (
            value(
                scrape(server, auth=BASIC),
                "sync_http_requests_total",
                route="/metrics",
                method="GET",
                status="401",
            )
            == 1
        )


def test_metrics_off_serves_no_metrics(redis_proc: RedisProcess, tmp_path: Path) -> None:
    with ServerProcess(tmp_path, redis_url=redis_proc.url, env={"SYNC_METRICS": "off"}) as server:
        response = httpx.get(f"{server.base_url}/metrics", auth=BASIC)
        assert (response.status_code, response.json()["code"]) == (404, 20404)
        description: dict[str, Any] = httpx.get(f"{server.base_url}/openapi.json").json()
        assert "/metrics" not in description["paths"]
        assert "/healthz" in description["paths"]


async def test_expiry_sweeps_are_timed_and_counted(server: ServerProcess, http: httpx.AsyncClient) -> None:
    service = new_service(server)
    before = scrape(server)
    for name in ("short-a", "short-b"):
        response = await http.post(documents_url(server, service), data={"UniqueName": name, "Ttl": "1"})
        assert response.status_code == 201

    async def both_gone() -> bool:
        gone = [await http.get(documents_url(server, service, n)) for n in ("short-a", "short-b")]
        return all(r.status_code == 404 for r in gone)

    await eventually(both_gone)
    # Removed by a sweep (of this server, the only one on this Redis); other tests' documents may
    # expire meanwhile, hence at least.
    await eventually(lambda: moved(before, scrape(server), "sync_documents_expired_total") >= 2)
    after = scrape(server)
    assert moved(before, after, "sync_expiry_sweep_duration_seconds_count") > 0
    assert moved(before, after, "sync_document_writes_total", kind="create", result="ok") == 2


def test_openmetrics_when_the_scraper_asks(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    assert "sync_document_writes_total" in response.text
