"""Paging of document lists: PageSize and PageToken validation, the meta envelope, creation order,
exact walks while documents come and go, and walking back with previous_page_url."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.rest import documents, expect_error

BASE = "http://testserver"
META_FIELDS = {"first_page_url", "key", "next_page_url", "page", "page_size", "previous_page_url", "url"}


async def create_many(client: httpx.AsyncClient, service: str, count: int) -> list[str]:
    sids = []
    for i in range(count):
        response = await client.post(documents(service), data={"Data": json.dumps({"i": i})})
        assert response.status_code == 201
        sids.append(response.json()["sid"])
    return sids


async def get_page(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def walk(client: httpx.AsyncClient, url: str) -> list[list[str]]:
    """Follows next_page_url to the end; the SIDs of each page."""
    pages: list[list[str]] = []
    next_url: str | None = url
    while next_url is not None:
        page = await get_page(client, next_url)
        pages.append([d["sid"] for d in page["documents"]])
        next_url = page["meta"]["next_page_url"]
    return pages


async def test_default_page_size_is_50(client: httpx.AsyncClient, service: str) -> None:
    sids = await create_many(client, service, 51)
    first = await get_page(client, documents(service))
    assert first["meta"]["page_size"] == 50
    assert [d["sid"] for d in first["documents"]] == sids[:50]
    second = await get_page(client, first["meta"]["next_page_url"])
    assert [d["sid"] for d in second["documents"]] == sids[50:]
    assert second["meta"]["next_page_url"] is None


@pytest.mark.parametrize("size", ["1", "1000", "0050"])
async def test_page_size_bounds_accepted(client: httpx.AsyncClient, service: str, size: str) -> None:
    page = await get_page(client, f"{documents(service)}?PageSize={size}")
    assert page["meta"]["page_size"] == int(size)


@pytest.mark.parametrize("size", ["0", "1001", "x", "", "-1", "1.5", " 5", "+5", "\u0665", "9" * 5000])
async def test_page_size_refused(client: httpx.AsyncClient, service: str, size: str) -> None:
    expect_error(await client.get(documents(service), params={"PageSize": size}), 400, 54454)
    expect_error(await client.get("/v1/Services", params={"PageSize": size}), 400, 54454)


@pytest.mark.parametrize(
    "token",
    ["garbage", "PT", "PTa", "PTz1", "PTazz", "PTa-1", "PTa 1", "PTa0x1", "PTa1_0", "PTA1", "PTa" + "f" * 17],
)
async def test_bad_page_token(client: httpx.AsyncClient, service: str, token: str) -> None:
    expect_error(await client.get(documents(service), params={"PageToken": token}), 400, 54453)
    expect_error(await client.get("/v1/Services", params={"PageToken": token}), 400, 54453)


async def test_meta_envelope(client: httpx.AsyncClient, service: str) -> None:
    sids = await create_many(client, service, 5)
    url = f"{BASE}{documents(service)}"
    first = await get_page(client, f"{documents(service)}?PageSize=2")
    meta = first["meta"]
    assert set(meta) == META_FIELDS
    assert meta["key"] == "documents"
    assert meta["page"] == 0
    assert meta["page_size"] == 2
    assert meta["first_page_url"] == f"{url}?PageSize=2&Page=0"
    assert meta["url"] == f"{url}?PageSize=2&Page=0"
    assert meta["previous_page_url"] is None
    assert meta["next_page_url"].startswith(f"{url}?PageSize=2&Page=1&PageToken=PT")
    second = await get_page(client, meta["next_page_url"])
    assert second["meta"]["page"] == 1
    assert second["meta"]["url"] == meta["next_page_url"]
    assert second["meta"]["first_page_url"] == meta["first_page_url"]
    assert second["meta"]["previous_page_url"] is not None
    third = await get_page(client, second["meta"]["next_page_url"])
    assert third["meta"]["page"] == 2
    assert [d["sid"] for d in first["documents"] + second["documents"] + third["documents"]] == sids
    # The last page: no next one, not even an empty one.
    assert third["meta"]["next_page_url"] is None


async def test_exact_fit_has_no_empty_last_page(client: httpx.AsyncClient, service: str) -> None:
    sids = await create_many(client, service, 4)
    pages = await walk(client, f"{documents(service)}?PageSize=2")
    assert pages == [sids[:2], sids[2:]]


async def test_empty_list(client: httpx.AsyncClient, service: str) -> None:
    page = await get_page(client, documents(service))
    assert page["documents"] == []
    assert page["meta"]["next_page_url"] is None
    assert page["meta"]["previous_page_url"] is None


async def test_previous_page_url_leads_back(client: httpx.AsyncClient, service: str) -> None:
    sids = await create_many(client, service, 7)
    forward: list[dict[str, Any]] = []
    next_url: str | None = f"{documents(service)}?PageSize=3"
    while next_url is not None:
        forward.append(await get_page(client, next_url))
        next_url = forward[-1]["meta"]["next_page_url"]
    assert [[d["sid"] for d in p["documents"]] for p in forward] == [sids[0:3], sids[3:6], sids[6:]]
    # Back from the last page to the first, page by page.
    page = forward[-1]
    for expected in reversed(forward[:-1]):
        previous_url = page["meta"]["previous_page_url"]
        assert previous_url is not None
        page = await get_page(client, previous_url)
        assert page["documents"] == expected["documents"]
        assert page["meta"]["page"] == expected["meta"]["page"]
    assert page["meta"]["previous_page_url"] is None
    # And forward again from a page reached backwards.
    again = await get_page(client, page["meta"]["next_page_url"])
    assert again["documents"] == forward[1]["documents"]


async def test_walk_while_documents_come_and_go(client: httpx.AsyncClient, service: str) -> None:
    """Cursors, not offsets: a deletion before the cursor must not make the walk skip a document,
    and a creation must not make it repeat one."""
    rng = random.Random(7)
    initial = await create_many(client, service, 40)
    deleted: set[str] = set()
    created: list[str] = []
    seen: list[str] = []
    next_url: str | None = f"{documents(service)}?PageSize=4"
    while next_url is not None:
        page = await get_page(client, next_url)
        seen += [d["sid"] for d in page["documents"]]
        next_url = page["meta"]["next_page_url"]
        # Between pages: delete two random documents (seen or not) and create two.
        alive = [sid for sid in initial + created if sid not in deleted]
        for sid in rng.sample(alive, 2):
            assert (await client.delete(f"{documents(service)}/{sid}")).status_code == 204
            deleted.add(sid)
        created += await create_many(client, service, 2)
    assert len(seen) == len(set(seen))
    survivors = [sid for sid in initial if sid not in deleted]
    assert [sid for sid in seen if sid in survivors] == survivors
    assert not set(seen) - set(initial) - set(created)


async def test_walk_with_concurrent_writers(client: httpx.AsyncClient, service: str) -> None:
    """The same, with creators and deleters running truly concurrently with the walk."""
    stable = await create_many(client, service, 30)
    doomed = await create_many(client, service, 30)
    interleaved = stable + doomed
    random.Random(3).shuffle(doomed)
    walking = True

    async def delete_doomed() -> None:
        for sid in doomed:
            await client.delete(f"{documents(service)}/{sid}")
            await asyncio.sleep(0)

    async def keep_creating() -> list[str]:
        made: list[str] = []
        while walking:
            made += await create_many(client, service, 1)
        return made

    async def walk_all() -> list[str]:
        nonlocal walking
        try:
            return [sid for page in await walk(client, f"{documents(service)}?PageSize=3") for sid in page]
        finally:
            walking = False

    seen, _, made = await asyncio.gather(walk_all(), delete_doomed(), keep_creating())
    assert len(seen) == len(set(seen))
    assert [sid for sid in seen if sid in stable] == stable
    assert made, "the creator never ran during the walk"
    assert not set(seen) - set(interleaved) - set(made)


async def test_unknown_page_number_only_echoes(client: httpx.AsyncClient, service: str) -> None:
    # Page is client state: without a PageToken it does not move the cursor.
    sids = await create_many(client, service, 3)
    page = await get_page(client, f"{documents(service)}?PageSize=2&Page=5")
    assert page["meta"]["page"] == 5
    assert [d["sid"] for d in page["documents"]] == sids[:2]
    assert query(page["meta"]["next_page_url"])["Page"] == ["6"]
    expect_error(await client.get(f"{documents(service)}?Page=x"), 400, 20001)
