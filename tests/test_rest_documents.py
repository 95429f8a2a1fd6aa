"""Documents over REST: every field, addressing by SID and by unique name, data round trips, and
revisions (the hex counter, If-Match, and the race of conditional writes)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.processes import TEST_ACCOUNT_SID, ServerProcess
from tests.support.rest import documents, expect_error

BASE = "http://testserver"
TWILIO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DOCUMENT_SID = re.compile(r"^ET[0-9a-f]{32}$")
DOCUMENT_FIELDS = {
    "sid",
    "unique_name",
    "account_sid",
    "service_sid",
    "url",
    "links",
    "revision",
    "data",
    "date_expires",
    "date_created",
    "date_updated",
    "created_by",
}


async def create(client: httpx.AsyncClient, service: str, **form: str) -> dict[str, Any]:
    response = await client.post(documents(service), data=form)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_without_anything(client: httpx.AsyncClient, service: str) -> None:
    response = await client.post(documents(service))
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == DOCUMENT_FIELDS
    assert DOCUMENT_SID.match(body["sid"])
    url = f"{BASE}/v1/Services/{service}/Documents/{body['sid']}"
    assert body["url"] == url
    assert body["links"] == {"permissions": f"{url}/Permissions"}
    assert body["unique_name"] is None
    assert body["account_sid"] == TEST_ACCOUNT_SID
    assert body["service_sid"] == service
    assert body["revision"] == "0"
    assert response.headers["ETag"] == "0"
    assert body["data"] == {}  # UNVERIFIED in Twilio's docs; the plausible default.
    assert body["date_expires"] is None
    assert TWILIO_DATE.match(body["date_created"])
    assert body["date_updated"] == body["date_created"]
    assert body["created_by"] == "system"


async def test_create_with_name_and_data_then_fetch_both_ways(
    client: httpx.AsyncClient, service: str
) -> None:
    body = await create(client, service, UniqueName="settings", Data='{"theme": "dark", "n": 1}')
    assert body["unique_name"] == "settings"
    assert body["data"] == {"theme": "dark", "n": 1}
    for ident in (body["sid"], "settings"):
        response = await client.get(f"{documents(service)}/{ident}")
        assert response.status_code == 200
        assert response.headers["ETag"] == "0"
        assert response.json() == body


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "a/b/c",
        "with space",
        "unicodé ✓ 日本 𝄞",
        "50% + 50%",
        "q?x=1#frag",
        "trailing.dot.",
        "a/Permissions",
        "ET" + "A" * 32,  # upper-case hex: not SID-shaped, so a valid name
        "x" * 320,
    ],
)
async def test_unique_names_in_the_path(client: httpx.AsyncClient, service: str, name: str) -> None:
    body = await create(client, service, UniqueName=name, Data='{"v":1}')
    path = f"{documents(service)}/{quote(name, safe='')}"
    fetched = await client.get(path)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["sid"] == body["sid"]
    assert fetched.json()["unique_name"] == name
    updated = await client.post(path, data={"Data": '{"v":2}'})
    assert updated.json()["data"] == {"v": 2}
    assert (await client.delete(path)).status_code == 204
    expect_error(await client.get(f"{documents(service)}/{body['sid']}"), 404, 20404)


async def test_unencoded_slash_in_a_name_reaches_the_document(
    client: httpx.AsyncClient, service: str
) -> None:
    # twilio-python 9.x puts names into the path as they are (see test_twilio_compat.py).
    body = await create(client, service, UniqueName="rooms/42/state")
    fetched = await client.get(f"{documents(service)}/rooms/42/state")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["sid"] == body["sid"]
    permission = await client.post(
        f"{documents(service)}/rooms/42/state/Permissions/alice",
        data={"Read": "true", "Write": "false", "Manage": "false"},
    )
    assert permission.status_code == 200, permission.text
    assert permission.json()["document_sid"] == body["sid"]
    listed = await client.get(f"{documents(service)}/rooms/42/state/Permissions")
    assert [p["identity"] for p in listed.json()["permissions"]] == ["alice"]


async def test_list_in_creation_order(client: httpx.AsyncClient, service: str) -> None:
    created = [await create(client, service, Data=json.dumps({"i": i})) for i in range(5)]
    response = await client.get(documents(service))
    assert response.status_code == 200
    body = response.json()
    assert body["meta"]["key"] == "documents"
    assert body["documents"] == created


async def test_update_data(client: httpx.AsyncClient, service: str) -> None:
    body = await create(client, service, UniqueName="u", Data='{"a":1,"b":2}')
    response = await client.post(f"{documents(service)}/{body['sid']}", data={"Data": '{"c":3}'})
    assert response.status_code == 200, response.text
    updated = response.json()
    # Data is replaced, not merged.
    assert updated["data"] == {"c": 3}
    assert updated["revision"] == "1"
    assert response.headers["ETag"] == "1"
    assert updated["date_created"] == body["date_created"]
    assert updated["date_updated"] >= body["date_created"]
    assert {k: v for k, v in updated.items() if k not in ("data", "revision", "date_updated")} == {
        k: v for k, v in body.items() if k not in ("data", "revision", "date_updated")
    }
    assert (await client.get(f"{documents(service)}/u")).json() == updated


async def test_update_needs_data_or_ttl(client: httpx.AsyncClient, service: str) -> None:
    body = await create(client, service)
    expect_error(await client.post(f"{documents(service)}/{body['sid']}"), 400, 20001)


@pytest.mark.parametrize("if_match", ['"0"', "0", 'W/"0"', ' "0" ', "00"])
async def test_if_match_quoted_or_bare(client: httpx.AsyncClient, service: str, if_match: str) -> None:
    body = await create(client, service)
    response = await client.post(
        f"{documents(service)}/{body['sid']}", data={"Data": '{"x":1}'}, headers={"If-Match": if_match}
    )
    assert response.status_code == 200, response.text
    assert response.json()["revision"] == "1"


async def test_delete(client: httpx.AsyncClient, service: str) -> None:
    body = await create(client, service, UniqueName="gone")
    response = await client.delete(f"{documents(service)}/gone")
    assert response.status_code == 204
    assert response.content == b""
    for ident in (body["sid"], "gone"):
        expect_error(await client.get(f"{documents(service)}/{ident}"), 404, 20404)
        expect_error(await client.delete(f"{documents(service)}/{ident}"), 404, 20404)
        expect_error(await client.post(f"{documents(service)}/{ident}", data={"Data": "{}"}), 404, 20404)
    assert (await client.get(documents(service))).json()["documents"] == []
    # The name is free again.
    assert (await create(client, service, UniqueName="gone"))["sid"] != body["sid"]


ROUND_TRIPS: list[dict[str, Any]] = [
    {"empty_array": []},
    {"nested": [[], {}, [[]], [{}], {"a": {"b": []}}], "obj": {}},
    {"u64_plus_one": 2**64, "big": 10**40, "negative": -(10**40), "i64_min_minus_one": -(2**63) - 1},
    {"u64_max": 2**64 - 1, "i64_min": -(2**63), "pi": 3.141592653589793, "tiny": 5e-324, "neg_zero": -0.0},
    {"text": 'he said "hi" \\ / \b\f\n\r\t \u0000 \u001f', "unicode": "héllo ✓ 日本 𝄞 \u2028"},
    {"uni ✓ key": True, "": None, "false": False},
    {"big_and_unicode": [123456789012345678901234567890, "✓"], "deep": [[[[[[[[[[1]]]]]]]]]]},
]


@pytest.mark.parametrize("value", ROUND_TRIPS)
async def test_data_round_trips(client: httpx.AsyncClient, service: str, value: dict[str, Any]) -> None:
    # json.loads keeps integers of any size exactly, so equality below is equality of meaning.
    text = json.dumps(value, ensure_ascii=False)
    created = await client.post(documents(service), data={"Data": text})
    assert created.status_code == 201, created.text
    sid = created.json()["sid"]
    assert json.loads(created.text)["data"] == value
    assert json.loads((await client.get(f"{documents(service)}/{sid}")).text)["data"] == value
    listed = json.loads((await client.get(documents(service))).text)["documents"]
    assert [d["data"] for d in listed] == [value]
    updated = await client.post(f"{documents(service)}/{sid}", data={"Data": text})
    assert json.loads(updated.text)["data"] == value
    # Escaped and raw spellings of the same text are the same data.
    ascii_text = json.dumps(value, ensure_ascii=True)
    again = await client.post(f"{documents(service)}/{sid}", data={"Data": ascii_text})
    assert json.loads(again.text)["data"] == value


async def test_big_integers_keep_their_digits(client: httpx.AsyncClient, service: str) -> None:
    digits = "123456789012345678901234567890123456789"
    response = await client.post(documents(service), data={"Data": f'{{"n": {digits}, "m": -{digits}}}'})
    assert response.status_code == 201, response.text
    # Byte-level: no float rendering (1.2345e+38) anywhere on the way.
    assert f'"n":{digits}' in response.text
    assert f'"m":-{digits}' in response.text


# -- revisions -------------------------------------------------------------------------------------


async def test_revision_is_a_hex_counter(client: httpx.AsyncClient, service: str) -> None:
    body = await create(client, service)
    url = f"{documents(service)}/{body['sid']}"
    for i in range(1, 21):
        response = await client.post(url, data={"Data": json.dumps({"i": i})})
        assert response.json()["revision"] == response.headers["ETag"] == format(i, "x")
    fetched = await client.get(url)
    assert fetched.json()["revision"] == "14"
    assert fetched.json()["data"] == {"i": 20}
    # A TTL-only update moves the expiry alone: the revision, data and date_updated stay.
    ttl_only = (await client.post(url, data={"Ttl": "100"})).json()
    assert ttl_only["revision"] == "14"
    assert ttl_only["data"] == {"i": 20}
    assert ttl_only["date_updated"] == fetched.json()["date_updated"]
    assert ttl_only["date_expires"] is not None


@pytest.mark.parametrize("if_match", ["1", '"1"', "ff", '"abc"'])
async def test_if_match_mismatch_writes_nothing(
    client: httpx.AsyncClient, service: str, if_match: str
) -> None:
    body = await create(client, service, Data='{"keep":true}')
    url = f"{documents(service)}/{body['sid']}"
    response = await client.post(
        url, data={"Data": '{"lost":true}', "Ttl": "5"}, headers={"If-Match": if_match}
    )
    expect_error(response, 412, 54103)
    assert (await client.get(url)).json() == body


@pytest.mark.parametrize("if_match", ["", "xyz", "1.0", '"', "*", "1" * 17, "-1"])
async def test_invalid_if_match(client: httpx.AsyncClient, service: str, if_match: str) -> None:
    # 54003 with 400 is UNVERIFIED (the reference marks its status unknown); "*" is refused too.
    body = await create(client, service)
    url = f"{documents(service)}/{body['sid']}"
    expect_error(await client.post(url, data={"Data": "{}"}, headers={"If-Match": if_match}), 400, 54003)
    assert (await client.get(url)).json()["revision"] == "0"


async def conditional_race(http: httpx.AsyncClient, service: str) -> None:
    response = await http.post(documents(service), data={"Data": '{"w":-1}'})
    url = f"{documents(service)}/{response.json()['sid']}"
    responses = await asyncio.gather(
        *(http.post(url, data={"Data": json.dumps({"w": i})}, headers={"If-Match": "0"}) for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [412] * 19
    for r in responses:
        if r.status_code == 412:
            assert r.json()["code"] == 54103
    winner = next(r.json() for r in responses if r.status_code == 200)
    final = (await http.get(url)).json()
    assert final["revision"] == "1"
    assert final["data"] == winner["data"]


async def test_conditional_race_in_process(client: httpx.AsyncClient, service: str) -> None:
    await conditional_race(client, service)


async def test_conditional_race_on_a_real_server(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth) as http:
        service = (await http.post("/v1/Services")).json()["sid"]
        await conditional_race(http, service)
