"""Access control on both socket protocols, against a real server process and a real Redis.

A service with ``AclEnabled=true``: a client principal (an access token) needs the document's read
right to open, fetch or subscribe, write to set, update or change the TTL, manage to remove, and may
never create; REST and Basic-authenticated sockets (system principals) are never restricted. Every
right and every operation is tried on the native protocol and on Twilsock.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.sync.client import connect

from sync_server.events import decode_event
from sync_server.gateway import twilsock_codec as codec
from sync_server.store import keys
from sync_server.tokens import mint_access_token
from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
)
from tests.support.realtime import Peer, ws_url
from tests.support.twilsock import TwilsockPeer

AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
FORBIDDEN = {"code": 54007, "status": 403}

# Every operation, and the right it needs (None: no right is enough, as for creating).
OPERATIONS: dict[str, str | None] = {
    "open": "read",
    "fetch": "read",
    "subscribe": "read",
    "set": "write",
    "update": "write",
    "set_ttl": "write",
    "create": None,
    "remove": "manage",
}
GRANTS: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, False, False),
    "read": (True, False, False),
    "write": (False, True, False),
    "manage": (False, False, True),
    "all": (True, True, True),
}


def token(service: str, identity: str) -> str:
    return mint_access_token(TEST_ACCOUNT_SID, TEST_API_KEY_SID, TEST_API_KEY_SECRET, identity, service)


def new_service(server: ServerProcess, *, acl: bool) -> str:
    response = httpx.post(
        f"{server.base_url}/v1/Services",
        data={"FriendlyName": "acl", "AclEnabled": "true" if acl else "false"},
        auth=AUTH,
    )
    assert response.status_code == 201, response.text
    assert response.json()["acl_enabled"] is acl
    sid: str = response.json()["sid"]
    return sid


def rest(server: ServerProcess, method: str, path: str, **data: str) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}/v1/Services/{path}", data=data or None, auth=AUTH)


def create_document(server: ServerProcess, service: str, name: str) -> dict[str, Any]:
    response = rest(server, "POST", f"{service}/Documents", UniqueName=name, Data='{"v":0}')
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def grant(
    server: ServerProcess, service: str, doc: str, identity: str, rights: tuple[bool, bool, bool]
) -> None:
    read, write, manage = (str(flag).lower() for flag in rights)
    response = rest(
        server,
        "POST",
        f"{service}/Documents/{doc}/Permissions/{identity}",
        Read=read,
        Write=write,
        Manage=manage,
    )
    assert response.status_code == 200, response.text


def allowed(operation: str, rights: tuple[bool, bool, bool]) -> bool:
    needed = OPERATIONS[operation]
    return needed is not None and rights[("read", "write", "manage").index(needed)]


@pytest.fixture(scope="module")
def acl_service(server: ServerProcess) -> str:
    return new_service(server, acl=True)


@pytest.fixture
def identity() -> str:
    return "user-" + secrets.token_hex(4)


# -- the native protocol --------------------------------------------------------------------------


async def native(peer: Peer, operation: str, name: str) -> dict[str, Any]:
    commands: dict[str, Callable[[], Any]] = {
        "open": lambda: peer.command("open", name=name, mode="open_existing", subscribe=False),
        "fetch": lambda: peer.command("fetch", doc=name),
        "subscribe": lambda: peer.command("subscribe", doc=name),
        "set": lambda: peer.command("set", doc=name, data={"v": 1}),
        "update": lambda: peer.command("update", doc=name, data={"w": 1}),
        "set_ttl": lambda: peer.command("set_ttl", doc=name, ttl=600),
        "remove": lambda: peer.command("remove", doc=name),
        "create": lambda: peer.command("open", name=name + "-new", mode="create_new"),
    }
    reply: dict[str, Any] = await commands[operation]()
    return reply


@pytest.fixture
async def client_peer(server: ServerProcess, acl_service: str, identity: str) -> AsyncIterator[Peer]:
    peer = await Peer.connect(ws_url(server, token=token(acl_service, identity)), basic=False)
    yield peer
    await peer.close()


@pytest.mark.parametrize("rights_name", GRANTS)
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_native_protocol_enforces_each_right(
    server: ServerProcess,
    acl_service: str,
    identity: str,
    client_peer: Peer,
    operation: str,
    rights_name: str,
) -> None:
    rights = GRANTS[rights_name]
    name = f"doc-{operation}-{rights_name}-{identity}"
    before = create_document(server, acl_service, name)
    grant(server, acl_service, name, identity, rights)
    reply = await native(client_peer, operation, name)
    if allowed(operation, rights):
        assert reply["ok"] is True, reply
    else:
        assert reply["ok"] is False
        assert {k: reply["error"][k] for k in ("code", "status")} == FORBIDDEN, reply
        # Nothing was applied: the document is as it was (and a refused create made nothing).
        after = rest(server, "GET", f"{acl_service}/Documents/{name}")
        assert after.status_code == 200
        assert (after.json()["revision"], after.json()["data"]) == (before["revision"], before["data"])
        assert after.json()["date_expires"] is None
        assert rest(server, "GET", f"{acl_service}/Documents/{name}-new").status_code == 404


async def test_a_missing_document_is_refused_like_a_forbidden_one(client_peer: Peer) -> None:
    """With access control on, a client learns nothing about documents it may not read."""
    reply = await client_peer.command("fetch", doc="no-such-document")
    assert {k: reply["error"][k] for k in ("code", "status")} == FORBIDDEN
    reply = await client_peer.command("open", name="no-such-document")
    assert {k: reply["error"][k] for k in ("code", "status")} == FORBIDDEN


async def test_a_forbidden_subscribe_receives_no_events(
    server: ServerProcess, acl_service: str, identity: str, client_peer: Peer
) -> None:
    name = f"quiet-{identity}"
    create_document(server, acl_service, name)
    assert (await client_peer.command("subscribe", doc=name))["error"]["code"] == 54007
    for i in range(3):
        assert rest(server, "POST", f"{acl_service}/Documents/{name}", Data=f'{{"i":{i}}}').status_code == 200
    await client_peer.ok("ping")
    assert client_peer.events == []


async def every_operation_succeeds(url: str, name: str, *, basic: bool) -> None:
    """Runs every operation on ``name`` (the create makes ``name-new``, which the remove deletes)."""
    peer = await Peer.connect(url, basic=basic)
    try:
        for operation in OPERATIONS:
            reply = await native(peer, operation, name if operation != "remove" else name + "-new")
            assert reply["ok"] is True, (operation, reply)
    finally:
        await peer.close()


async def test_system_principals_are_never_restricted(server: ServerProcess, acl_service: str) -> None:
    """REST and Basic-authenticated sockets act as the system: no permission is needed."""
    name = "system-" + secrets.token_hex(4)
    create_document(server, acl_service, name)
    assert rest(server, "POST", f"{acl_service}/Documents/{name}", Data='{"by":"rest"}').status_code == 200
    await every_operation_succeeds(ws_url(server, service=acl_service, identity="backend"), name, basic=True)


async def test_with_acl_off_every_client_may_act(server: ServerProcess, identity: str) -> None:
    service = new_service(server, acl=False)
    name = "open-" + secrets.token_hex(4)
    create_document(server, service, name)
    await every_operation_succeeds(ws_url(server, token=token(service, identity)), name, basic=False)


async def test_a_document_a_client_creates_names_it_as_creator(server: ServerProcess, identity: str) -> None:
    service = new_service(server, acl=False)
    peer = await Peer.connect(ws_url(server, token=token(service, identity)), basic=False)
    try:
        created = await peer.ok("open", name="mine-" + identity, data={"a": 1})
        assert created["document"]["created_by"] == identity
    finally:
        await peer.close()


# -- Twilsock -------------------------------------------------------------------------------------


@pytest.fixture
def twilsock_peer(server: ServerProcess, acl_service: str, identity: str) -> Iterator[TwilsockPeer]:
    with connect(server.base_url.replace("http://", "ws://") + "/v3/wsconnect") as ws:
        peer = TwilsockPeer(ws)
        reply = peer.reply_to(peer.send({"method": "init", "token": token(acl_service, identity)}))
        assert reply.header["status"]["code"] == 200
        yield peer


def twilsock(peer: TwilsockPeer, operation: str, name: str, sid: str) -> tuple[int, Any]:
    """Runs one operation as the SDK would; returns the HTTP status and the error body (or None)."""
    if operation == "subscribe":
        request = {"object_sid": sid, "object_type": "document", "last_event_id": 0}
        body = {
            "event_protocol_version": 4,
            "action": "establish",
            "correlation_id": 7,
            "requests": [request],
        }
        reply = peer.request("POST", "/v4/Subscriptions", body)
        assert reply.header["http_status"]["code"] == 202
        note = peer.notification()
        if note["event_type"] == "subscription_failed":
            return note["event"]["error"]["status"], note["event"]["error"]
        assert note["event_type"] == "subscription_established", note
        return 200, None
    requests: dict[str, tuple[str, str, Any]] = {
        "open": ("GET", f"/v3/Documents/{name}", None),
        "fetch": ("GET", f"/v3/Documents/{sid}", None),
        "set": ("POST", f"/v3/Documents/{sid}", {"data": {"v": 1}}),
        "update": ("POST", f"/v3/Documents/{sid}", {"data": {"v": 2}}),
        "set_ttl": ("POST", f"/v3/Documents/{sid}", {"ttl": 600}),
        "remove": ("DELETE", f"/v3/Documents/{sid}", None),
        "create": ("POST", "/v3/Documents", {"unique_name": name + "-new", "data": {}}),
    }
    method, path, body = requests[operation]
    headers = {"If-Match": "0"} if operation == "update" else {}
    reply = peer.request(method, path, body, **headers)
    status: int = reply.header["http_status"]["code"]
    return status, (codec.json_payload(reply) if status >= 400 else None)


@pytest.mark.parametrize("rights_name", GRANTS)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_twilsock_enforces_each_right(
    server: ServerProcess,
    acl_service: str,
    identity: str,
    twilsock_peer: TwilsockPeer,
    operation: str,
    rights_name: str,
) -> None:
    rights = GRANTS[rights_name]
    name = f"ts-{operation}-{rights_name}-{identity}"
    before = create_document(server, acl_service, name)
    grant(server, acl_service, name, identity, rights)
    status, error = twilsock(twilsock_peer, operation, name, before["sid"])
    if allowed(operation, rights):
        assert 200 <= status < 300, error
    else:
        assert status == 403
        assert error is not None and error["code"] == 54007, error
        after = rest(server, "GET", f"{acl_service}/Documents/{name}").json()
        assert (after["revision"], after["data"], after["date_expires"]) == (
            before["revision"],
            before["data"],
            None,
        )


async def test_events_carry_their_writer(server: ServerProcess, redis: Redis, identity: str) -> None:
    """Every event names who wrote it: the client's identity and connection, or ``system`` for REST."""
    service = new_service(server, acl=False)
    doc = create_document(server, service, "origin-" + identity)["sid"]
    peer = await Peer.connect(ws_url(server, token=token(service, identity)), basic=False)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(keys.document_channel(service, doc))
        await peer.ok("set", doc=doc, data={"by": "client"})
        assert rest(server, "POST", f"{service}/Documents/{doc}", Data='{"by":"rest"}').status_code == 200
        await peer.ok("remove", doc=doc)
        seen = []
        async with asyncio.timeout(10):
            while len(seen) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    seen.append(decode_event(message["data"]))
        assert [(e.kind, e.writer, e.writer_endpoint) for e in seen] == [
            ("updated", identity, peer.connected["connection_id"]),
            ("updated", "system", None),
            ("removed", identity, peer.connected["connection_id"]),
        ]
    finally:
        await pubsub.aclose()
        await peer.close()
