"""Services over REST: fields and defaults, updates, paging, deletion with its events, the
``default`` alias, and 54050 for everything under an unknown service."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from sync_server.app import create_app
from sync_server.config import Settings
from sync_server.store import keys
from sync_server.store.redis_store import RedisStore, default_service_sid
from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN
from tests.support.rest import expect_error

BASE = "http://testserver"
TWILIO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SERVICE_SID = re.compile(r"^IS[0-9a-f]{32}$")
SERVICE_FIELDS = {
    "sid",
    "unique_name",
    "account_sid",
    "friendly_name",
    "date_created",
    "date_updated",
    "url",
    "webhook_url",
    "webhooks_from_rest_enabled",
    "reachability_webhooks_enabled",
    "acl_enabled",
    "reachability_debouncing_enabled",
    "reachability_debouncing_window",
    "links",
}
UNKNOWN_SERVICE = "IS" + "0" * 32


async def subscribe(redis: Redis, channel: str) -> PubSub:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    # Wait for the confirmation: until Redis has it, an event published now would be missed.
    confirmation = await pubsub.get_message(timeout=2.0)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


async def next_event(pubsub: PubSub, wait: float = 2.0) -> dict[str, Any] | None:
    deadline = asyncio.get_running_loop().time() + wait
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            event: dict[str, Any] = json.loads(message["data"])
            return event
    return None


async def test_create_with_defaults(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/Services")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == SERVICE_FIELDS
    sid = body["sid"]
    assert SERVICE_SID.match(sid)
    url = f"{BASE}/v1/Services/{sid}"
    assert body["url"] == url
    assert body["account_sid"] == TEST_ACCOUNT_SID
    assert body["friendly_name"] is None
    assert body["unique_name"] is None
    assert body["webhook_url"] is None
    assert body["reachability_debouncing_window"] == 5000
    for flag in (
        "webhooks_from_rest_enabled",
        "reachability_webhooks_enabled",
        "acl_enabled",
        "reachability_debouncing_enabled",
    ):
        assert body[flag] is False
    assert body["links"] == {
        "documents": f"{url}/Documents",
        "lists": f"{url}/Lists",
        "maps": f"{url}/Maps",
        "streams": f"{url}/Streams",
    }
    assert TWILIO_DATE.match(body["date_created"])
    assert TWILIO_DATE.match(body["date_updated"])


async def test_create_with_every_setting(client: httpx.AsyncClient) -> None:
    form = {
        "FriendlyName": "chat ✓",
        "WebhookUrl": "https://example.com/hook",
        "ReachabilityWebhooksEnabled": "true",
        "AclEnabled": "true",
        "ReachabilityDebouncingEnabled": "true",
        "ReachabilityDebouncingWindow": "30000",
        "WebhooksFromRestEnabled": "true",
    }
    response = await client.post("/v1/Services", data=form)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["friendly_name"] == "chat ✓"
    assert body["webhook_url"] == "https://example.com/hook"
    assert body["reachability_debouncing_window"] == 30000
    assert body["acl_enabled"] is body["reachability_webhooks_enabled"] is True
    assert body["reachability_debouncing_enabled"] is body["webhooks_from_rest_enabled"] is True
    fetched = await client.get(f"/v1/Services/{body['sid']}")
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_update(client: httpx.AsyncClient, service: str) -> None:
    response = await client.post(
        f"/v1/Services/{service}",
        data={"AclEnabled": "true", "ReachabilityDebouncingWindow": "1000", "FriendlyName": "renamed"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["acl_enabled"] is True
    assert body["reachability_debouncing_window"] == 1000
    assert body["friendly_name"] == "renamed"
    # Unsent settings keep their values.
    assert body["webhooks_from_rest_enabled"] is False
    response = await client.post(f"/v1/Services/{service}", data={"AclEnabled": "false"})
    assert response.json()["acl_enabled"] is False
    assert response.json()["reachability_debouncing_window"] == 1000


@pytest.mark.parametrize(
    "form",
    [
        {"ReachabilityDebouncingWindow": "999"},
        {"ReachabilityDebouncingWindow": "30001"},
        {"ReachabilityDebouncingWindow": "abc"},
        {"ReachabilityDebouncingWindow": ""},
        {"ReachabilityDebouncingWindow": "1500.5"},
        {"ReachabilityDebouncingWindow": "9" * 5000},
        {"AclEnabled": "yes"},
        {"AclEnabled": "1"},
        {"WebhookUrl": "ftp://example.com"},
        {"FriendlyName": "x" * 257},
    ],
)
async def test_update_refuses_invalid_settings(
    client: httpx.AsyncClient, service: str, form: dict[str, str]
) -> None:
    before = (await client.get(f"/v1/Services/{service}")).json()
    # Together with a valid setting: validation must refuse the request as a whole.
    response = await client.post(f"/v1/Services/{service}", data={"FriendlyName": "changed", **form})
    expect_error(response, 400, 20001)
    assert (await client.get(f"/v1/Services/{service}")).json() == before
    expect_error(await client.post("/v1/Services", data=form), 400, 20001)


async def test_list_pages_in_creation_order(client: httpx.AsyncClient) -> None:
    created = []
    for _ in range(3):
        created.append((await client.post("/v1/Services")).json()["sid"])
    response = await client.get("/v1/Services", params={"PageSize": 2})
    assert response.status_code == 200
    assert response.json()["meta"]["key"] == "services"
    seen: list[str] = []
    url: str | None = str(response.url)
    while url is not None:
        page = (await client.get(url)).json()
        assert len(page["services"]) <= 2
        seen += [s["sid"] for s in page["services"]]
        url = page["meta"]["next_page_url"]
    # Other tests create services concurrently in the same Redis: ours appear once, in order.
    assert len(seen) == len(set(seen))
    assert [sid for sid in seen if sid in created] == created


async def test_delete_removes_documents_and_tells_subscribers(
    client: httpx.AsyncClient, service: str, redis: Redis, store: RedisStore
) -> None:
    docs = [
        (await client.post(f"/v1/Services/{service}/Documents", data={"UniqueName": f"d{i}"})).json()
        for i in range(2)
    ]
    pubsub = await subscribe(redis, keys.document_channel(service, docs[0]["sid"]))
    try:
        response = await client.delete(f"/v1/Services/{service}")
        assert response.status_code == 204
        assert response.content == b""
        # The documents go in the sweep's bounded purge steps (the in-process app has no sweeper).
        await store.sweep_expired()
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert event == {
        "e": "removed",
        "s": service,
        "sid": docs[0]["sid"],
        "n": "d0",
        "r": 0,
        "why": "service_deleted",
    }
    expect_error(await client.get(f"/v1/Services/{service}"), 404, 54050)
    expect_error(await client.get(f"/v1/Services/{service}/Documents/{docs[1]['sid']}"), 404, 54050)
    expect_error(await client.get(f"/v1/Services/{service}/Documents/d1"), 404, 54050)
    expect_error(await client.delete(f"/v1/Services/{service}"), 404, 54050)
    assert not await store.purging()
    assert await redis.keys(f"*{service}*") == []
    assert await redis.zscore("sync:{services}:index", service) is None
    listed = (await client.get("/v1/Services", params={"PageSize": 1000})).json()
    assert service not in [s["sid"] for s in listed["services"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("POST", ""),
        ("DELETE", ""),
        ("GET", "/Documents"),
        ("POST", "/Documents"),
        ("GET", "/Documents/ET" + "1" * 32),
        ("GET", "/Documents/some-name"),
        ("POST", "/Documents/some-name"),
        ("DELETE", "/Documents/some-name"),
        ("GET", "/Documents/some-name/Permissions"),
        ("GET", "/Documents/some-name/Permissions/alice"),
    ],
)
async def test_unknown_service_is_54050(client: httpx.AsyncClient, method: str, path: str) -> None:
    data = {"Data": "{}"} if method == "POST" else None
    response = await client.request(method, f"/v1/Services/{UNKNOWN_SERVICE}{path}", data=data)
    expect_error(response, 404, 54050)


async def test_default_alias_is_one_service_across_app_instances(settings: Settings) -> None:
    expected = default_service_sid(TEST_ACCOUNT_SID)
    apps = [create_app(settings), create_app(settings)]
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE, auth=(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
        )
        for app in apps
    ]
    try:
        # Both instances may be the first user of the alias at once.
        first, second = await asyncio.gather(*(c.get("/v1/Services/default") for c in clients))
        assert first.status_code == second.status_code == 200
        assert first.json()["sid"] == second.json()["sid"] == expected
        assert first.json()["unique_name"] == "default"
        created = await clients[0].post("/v1/Services/default/Documents", data={"Data": '{"via":"alias"}'})
        assert created.status_code == 201, created.text
        doc = created.json()
        assert doc["service_sid"] == expected
        assert doc["url"] == f"{BASE}/v1/Services/{expected}/Documents/{doc['sid']}"
        fetched = await clients[1].get(f"/v1/Services/{expected}/Documents/{doc['sid']}")
        assert fetched.json()["data"] == {"via": "alias"}
        assert (await clients[1].delete(f"/v1/Services/default/Documents/{doc['sid']}")).status_code == 204
    finally:
        for http, app in zip(clients, apps, strict=True):
            await http.aclose()
            await app.state.store.close()
