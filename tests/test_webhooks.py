"""Webhooks from a real server process to a real HTTP receiver: each event type from REST and from
client writes (the native protocol and the official Twilio Sync JS SDK), every parameter, the signature
checked with the official ``twilio`` library's ``RequestValidator``, the REST gate on and off, the
idempotency token across retries, expiry, the logs and the metrics.

The server runs on a Redis of this module's own (no other test's server delivers from it) with short
retry waits. Each test has a service and a receiver path of its own.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    ServerProcess,
    start_redis,
)
from tests.support.realtime import Peer, eventually, ws_url
from tests.support.sdk import access_token, missing_node_sdk, require
from tests.support.webhooks import Received, Receiver, valid_signature
from tests.test_metrics import moved, scrape

FAST = {
    "SYNC_WEBHOOK_FIRST_WAIT": "0.05",
    "SYNC_WEBHOOK_MAX_WAIT": "0.3",
    "SYNC_WEBHOOK_TIMEOUT": "3",
    "SYNC_WEBHOOK_LEASE": "2",
}


@pytest.fixture(scope="module")
def hook_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path_factory.mktemp("webhooks-redis"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(hook_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("webhooks"), redis_url=hook_redis.url, env=FAST).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth, timeout=20) as client:
        yield client


@pytest.fixture
def path(receiver: Receiver) -> Iterator[str]:
    """A receiver path of the test's own; answers go back to 200 after it."""
    yield "/" + secrets.token_hex(4)
    receiver.answer(200)


async def webhook_service(http: httpx.AsyncClient, url: str, *, rest: bool) -> str:
    form = {"WebhookUrl": url, "WebhooksFromRestEnabled": str(rest).lower()}
    response = await http.post("/v1/Services", data=form)
    assert response.status_code == 201, response.text
    assert response.json()["webhook_url"] == url
    sid: str = response.json()["sid"]
    return sid


def token(service: str, identity: str) -> str:
    return mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, identity, service)


def check(url: str, received: Received) -> dict[str, str]:
    """What every webhook has: Twilio's form, signed; returns its parameters."""
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"
    assert valid_signature(url, received), received
    assert received.token
    return received.params


def data(params: dict[str, str]) -> Any:
    return json.loads(params["DocumentData"])


async def test_rest_changes_are_sent_with_the_gate_on(
    http: httpx.AsyncClient, receiver: Receiver, path: str
) -> None:
    url = receiver.url(path)
    service = await webhook_service(http, url, rest=True)
    docs = f"/v1/Services/{service}/Documents"
    named = (await http.post(docs, data={"UniqueName": "todo", "Data": '{"a":1}'})).json()
    assert (await http.post(f"{docs}/todo", data={"Data": '{"a":2, "b":[]}'})).status_code == 200
    anonymous = (await http.post(docs, data={"Data": '{"n":12345678901234567890}'})).json()
    assert (await http.delete(f"{docs}/todo")).status_code == 204
    await receiver.wait_for(lambda r: len(r.delivered(path)) == 4)
    got = [check(url, r) for r in receiver.delivered(path)]
    common = {"AccountSid": TEST_ACCOUNT_SID, "ServiceSid": service, "Identity": "system"}
    todo = [p for p in got if p["DocumentSid"] == named["sid"]]
    assert todo == [
        {
            **common,
            "EventType": "document_created",
            "DocumentSid": named["sid"],
            "DocumentUniqueName": "todo",
            "DocumentRevision": "0",
            "DocumentData": '{"a":1}',
        },
        {
            **common,
            "EventType": "document_updated",
            "DocumentSid": named["sid"],
            "DocumentUniqueName": "todo",
            "DocumentRevision": "1",
            "DocumentData": '{"a":2,"b":[]}',
        },
        {
            **common,
            "EventType": "document_removed",
            "DocumentSid": named["sid"],
            "DocumentUniqueName": "todo",
            "DocumentRevision": "1",
        },
    ]
    (unnamed,) = [p for p in got if p["DocumentSid"] == anonymous["sid"]]
    assert unnamed == {
        **common,
        "EventType": "document_created",
        "DocumentSid": anonymous["sid"],
        "DocumentRevision": "0",
        "DocumentData": '{"n":12345678901234567890}',  # exact, as stored
    }
    assert len({r.token for r in receiver.delivered(path)}) == 4


async def test_rest_changes_wait_for_the_gate_client_changes_never_do(
    http: httpx.AsyncClient, receiver: Receiver, path: str, server: ServerProcess
) -> None:
    url = receiver.url(path)
    service = await webhook_service(http, url, rest=False)
    docs = f"/v1/Services/{service}/Documents"
    created = (await http.post(docs, data={"UniqueName": "gated", "Data": "{}"})).json()
    assert (await http.post(f"{docs}/gated", data={"Data": '{"by":"rest"}'})).status_code == 200
    peer = await Peer.connect(ws_url(server, token=token(service, "alice")), basic=False)
    try:
        await peer.ok("set", doc="gated", data={"by": "alice"})
        # The same document, so the same partition and lane: anything REST had sent came first.
        await receiver.wait_for(lambda r: len(r.delivered(path)) >= 1)
        (first,) = [check(url, r) for r in receiver.delivered(path)]
        assert first == {
            "AccountSid": TEST_ACCOUNT_SID,
            "ServiceSid": service,
            "EventType": "document_updated",
            "Identity": "alice",
            "EndpointId": peer.connected["connection_id"],
            "DocumentSid": created["sid"],
            "DocumentUniqueName": "gated",
            "DocumentRevision": "2",
            "DocumentData": '{"by":"alice"}',
        }
        # Turning the gate on reaches the write scripts at once.
        assert (
            await http.post(f"/v1/Services/{service}", data={"WebhooksFromRestEnabled": "true"})
        ).is_success
        assert (await http.post(f"{docs}/gated", data={"Data": '{"by":"rest again"}'})).status_code == 200
        await receiver.wait_for(lambda r: len(r.delivered(path)) == 2)
        second = check(url, receiver.delivered(path)[1])
        assert (second["Identity"], second["DocumentRevision"], "EndpointId" in second) == (
            "system",
            "3",
            False,
        )
        # Without a URL nothing is sent; a new URL takes effect for the next change.
        assert (await http.post(f"/v1/Services/{service}", data={"WebhookUrl": ""})).is_success
        await peer.ok("set", doc="gated", data={"unsent": True})
        elsewhere = path + "-after"
        assert (
            await http.post(f"/v1/Services/{service}", data={"WebhookUrl": receiver.url(elsewhere)})
        ).is_success
        await peer.ok("set", doc="gated", data={"sent": True})
        await receiver.wait_for(lambda r: len(r.delivered(elsewhere)) == 1)
        assert data(receiver.delivered(elsewhere)[0].params) == {"sent": True}
        assert len(receiver.of(path)) == 2
    finally:
        await peer.close()


async def test_native_client_changes(
    http: httpx.AsyncClient, receiver: Receiver, path: str, server: ServerProcess
) -> None:
    url = receiver.url(path)
    service = await webhook_service(http, url, rest=False)
    peer = await Peer.connect(ws_url(server, token=token(service, "bob")), basic=False)
    try:
        opened = await peer.ok("open", name="native", mode="create_new", data={"x": 1})
        sid = opened["document"]["sid"]
        await peer.ok("set", doc="native", data={"x": 2})
        await peer.ok("update", doc="native", data={"y": 3})
        await peer.ok("remove", doc="native")
        await receiver.wait_for(lambda r: len(r.delivered(path)) == 4)
    finally:
        await peer.close()
    got = [check(url, r) for r in receiver.delivered(path)]
    endpoint = peer.connected["connection_id"]
    assert [(p["EventType"], p["DocumentRevision"], p.get("DocumentData")) for p in got] == [
        ("document_created", "0", '{"x":1}'),
        ("document_updated", "1", '{"x":2}'),
        ("document_updated", "2", '{"x":2,"y":3}'),
        ("document_removed", "2", None),
    ]
    assert {(p["Identity"], p["EndpointId"], p["DocumentSid"], p["DocumentUniqueName"]) for p in got} == {
        ("bob", endpoint, sid, "native")
    }
    # A socket authenticated with the account's credentials is a client connection all the same.
    system = await Peer.connect(ws_url(server, service=service))
    try:
        await system.ok("open", name="by-system", mode="create_new", data={})
        await receiver.wait_for(lambda r: len(r.delivered(path)) == 5)
    finally:
        await system.close()
    last = check(url, receiver.delivered(path)[4])
    assert (last["Identity"], last["EndpointId"]) == ("system", system.connected["connection_id"])


async def test_the_twilio_sync_sdk_changes(
    http: httpx.AsyncClient, receiver: Receiver, path: str, server: ServerProcess
) -> None:
    require(missing_node_sdk(), "the JS SDK webhook test")
    from tests.test_twilsock_sdk import run_scenario

    url = receiver.url(path)
    service = await webhook_service(http, url, rest=False)
    name = "sdk-" + secrets.token_hex(4)
    tokens = [access_token(service, "alice"), access_token(service, "bob")]
    run_scenario(server, "setUpdate", tokens=tokens, name=name)
    await receiver.wait_for(lambda r: len(r.delivered(path)) == 3)
    got = [check(url, r) for r in receiver.delivered(path)]
    assert [(p["EventType"], p["Identity"], p["DocumentRevision"], data(p)) for p in got] == [
        ("document_created", "alice", "0", {}),
        ("document_updated", "alice", "1", {"greeting": "hello", "n": 1}),
        ("document_updated", "bob", "2", {"greeting": "hello", "n": 2, "from": "b"}),
    ]
    assert got[0]["EndpointId"] == got[1]["EndpointId"] != got[2]["EndpointId"]
    assert {p["DocumentUniqueName"] for p in got} == {name}

    removed, expiring = name + "-rm", name + "-ttl"
    run_scenario(server, "removed", tokens=tokens, name=removed, ttlName=expiring)
    await receiver.wait_for(lambda r: len(r.delivered(path)) == 7)
    more = [check(url, r) for r in receiver.delivered(path)[3:]]
    by_name = {(p["DocumentUniqueName"], p["EventType"]): p for p in more}
    assert by_name[(removed, "document_removed")]["Identity"] == "alice"
    assert data(by_name[(expiring, "document_created")]) == {"short": True}
    expired = by_name[(expiring, "document_removed")]
    assert (expired["Identity"], "EndpointId" in expired, "DocumentRevision" in expired) == (
        "system",
        False,
        False,
    )


async def test_the_idempotency_token_is_the_same_on_every_retry(
    http: httpx.AsyncClient, receiver: Receiver, path: str, server: ServerProcess
) -> None:
    url = receiver.url(path)

    def twice_unavailable(received: Received) -> int:
        if received.path != path:
            return 200
        return 503 if len([r for r in receiver.of(path) if r.token == received.token]) < 2 else 200

    receiver.answer(twice_unavailable)
    service = await webhook_service(http, url, rest=True)
    before = scrape(server)
    docs = f"/v1/Services/{service}/Documents"
    for name in ("one", "two"):
        assert (await http.post(docs, data={"UniqueName": name})).status_code == 201
    await receiver.wait_for(lambda r: len(r.delivered(path)) == 2)
    attempts = receiver.of(path)
    assert len(attempts) == 6
    for delivered in receiver.delivered(path):
        same = [r for r in attempts if r.token == delivered.token]
        assert [r.status for r in same] == [503, 503, 200]
        assert {(r.signature, tuple(sorted(r.params.items()))) for r in same} == {
            (delivered.signature, tuple(sorted(delivered.params.items())))
        }
        check(url, delivered)
    # The receiver records a request as it answers it; the server counts the answer once it has read
    # it, a moment later.
    await eventually(
        lambda: moved(before, scrape(server), "sync_webhook_deliveries_total", outcome="delivered") >= 2
    )
    after = scrape(server)
    assert moved(before, after, "sync_webhook_deliveries_total", outcome="delivered") == 2
    assert moved(before, after, "sync_webhook_deliveries_total", outcome="failed") == 4
    assert moved(before, after, "sync_webhook_retries_total") == 4


async def test_an_expiry_is_sent_whatever_the_gate(
    http: httpx.AsyncClient, receiver: Receiver, path: str
) -> None:
    url = receiver.url(path)
    service = await webhook_service(http, url, rest=False)
    created = await http.post(f"/v1/Services/{service}/Documents", data={"UniqueName": "brief", "Ttl": "1"})
    assert created.status_code == 201
    await receiver.wait_for(lambda r: len(r.delivered(path)) == 1, within=15)
    assert check(url, receiver.delivered(path)[0]) == {
        "AccountSid": TEST_ACCOUNT_SID,
        "ServiceSid": service,
        "EventType": "document_removed",
        "Identity": "system",
        "DocumentSid": created.json()["sid"],
        "DocumentUniqueName": "brief",
    }


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "javascript:alert(1)", "mailto:a@b.c", "/relative"]
)
async def test_a_webhook_url_must_be_http_or_https(http: httpx.AsyncClient, url: str) -> None:
    response = await http.post("/v1/Services", data={"WebhookUrl": url})
    assert response.status_code == 400
    assert response.json()["code"] == 20001


async def test_outcomes_are_logged_without_any_secret(
    http: httpx.AsyncClient, receiver: Receiver, path: str, server: ServerProcess
) -> None:
    secret = "hook-secret-" + secrets.token_hex(4)
    url = receiver.url(path).replace("http://", f"http://hook-user:{secret}@")

    def once_unavailable(received: Received) -> int:
        return 503 if received.path == path and not receiver.of(path) else 200

    receiver.answer(once_unavailable)
    service = await webhook_service(http, url, rest=True)
    assert (
        await http.post(f"/v1/Services/{service}/Documents", data={"UniqueName": "logged"})
    ).status_code == 201
    await receiver.wait_for(lambda r: len(r.delivered(path)) == 1)
    delivered = receiver.delivered(path)[0]
    # The credentials go as Basic auth; the signature covers the URL the receiver sees.
    assert (
        delivered.headers["authorization"]
        == "Basic " + base64.b64encode(f"hook-user:{secret}".encode()).decode()
    )
    assert valid_signature(receiver.url(path), delivered)
    # Logged once the answer is in, which is just after the receiver counted it.
    await eventually(lambda: f"delivered to {receiver.url(path)}: HTTP 200" in server.log_tail(2000))
    log = server.log_tail(2000)
    assert "failed: HTTP 503 (attempt 1)" in log
    assert delivered.token in log
    for hidden in (TEST_AUTH_TOKEN, secret, *(r.signature for r in receiver.requests)):
        assert hidden not in log
