"""Access tokens on the websocket, minted by the official ``twilio`` library: accepted, refused
(4401 forged, longer than 24 h or without a Sync grant; 4410 expired), replaced with ``update_token``,
and the close when one runs out.

The verifier tolerates 5 s of clock skew on ``exp`` (``sync_server.tokens.DEFAULT_LEEWAY``): an
"expired" token here is a minute past its ``exp``, while a connection is closed at ``exp`` itself,
so a token minted with a two-second lifetime is accepted and then closed about two seconds later.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import SyncGrant, VideoGrant
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sync_client import ConnectionDeniedError, ConnectionState, SyncClient
from sync_server.embedded import RedisProcess
from sync_server.gateway import twilsock_codec
from sync_server.tokens import DEFAULT_LEEWAY, MAX_TOKEN_LIFETIME
from tests.support.processes import TEST_ACCOUNT_SID, TEST_API_KEY_SECRET, TEST_API_KEY_SID, ServerProcess
from tests.support.realtime import (
    BASIC,
    FAST_BACKOFF,
    WAIT,
    Peer,
    documents_url,
    eventually,
    stop_servers,
    ws_url,
)


@pytest.fixture(scope="module")
def server(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("tokens"), redis_url=redis_proc.url).start()
    yield proc
    stop_servers([proc])


def twilio_token(
    identity: str,
    service: str,
    *,
    ttl: int = 3600,
    valid_until: int | None = None,
    secret: str = TEST_API_KEY_SECRET,
    sync: bool = True,
) -> str:
    """A Sync access token exactly as an application backend would mint it with twilio-python (with
    ``sync=False``, a Video token instead: valid and signed, but without a Sync grant)."""
    token = AccessToken(
        TEST_ACCOUNT_SID, TEST_API_KEY_SID, secret, identity=identity, ttl=ttl, valid_until=valid_until
    )
    token.add_grant(SyncGrant(service_sid=service) if sync else VideoGrant(room=service))
    minted = token.to_jwt()
    return minted if isinstance(minted, str) else minted.decode()


def expires_at(token: str) -> int:
    payload = token.split(".")[1]
    exp: int = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
    return exp


async def refused_with(server: ServerProcess, token: str) -> int | None:
    """The close code of a handshake with ``token`` (the server accepts, then closes at once)."""
    return await refused_with_url(ws_url(server, token=token))


async def test_token_from_the_twilio_library_is_accepted(server: ServerProcess, service: str) -> None:
    async with SyncClient(server.base_url, token=twilio_token("alice", service)) as client:
        assert (client.identity, client.service_sid) == ("alice", service)
        doc = await client.document("drawn-by-alice", data={"x": 1})
        assert doc.created_by == "alice"
    async with httpx.AsyncClient(auth=BASIC) as http:
        stored = (await http.get(documents_url(server, service, "drawn-by-alice"))).json()
    assert stored["created_by"] == "alice"


async def test_expired_and_forged_tokens_are_refused(server: ServerProcess, service: str) -> None:
    expired = twilio_token("alice", service, valid_until=int(time.time()) - 60)
    forged = twilio_token("alice", service, secret="not-the-secret-" + "x" * 32)
    assert await refused_with(server, expired) == 4410
    assert await refused_with(server, forged) == 4401

    states: list[ConnectionState] = []
    client = SyncClient(server.base_url, token=forged)
    client.on("connection_state", states.append)
    with pytest.raises(ConnectionDeniedError) as info:
        await client.connect()
    assert info.value.close_code == 4401
    assert client.state == "denied" and states[-1] == "denied"


async def test_tokens_over_24_hours_or_without_a_sync_grant_are_refused(
    server: ServerProcess, service: str
) -> None:
    too_long = twilio_token("mallory", service, ttl=MAX_TOKEN_LIFETIME + 3600)
    no_sync = twilio_token("mallory", service, sync=False)
    # A well-behaved client on the same document keeps receiving its events throughout.
    bystander = await Peer.connect(ws_url(server, token=twilio_token("grace", service)), basic=False)
    try:
        sid = (await bystander.ok("open", name="bystander", data={"n": 0}))["document"]["sid"]
        for token, code, words in ((too_long, 20157, "24 hours"), (no_sync, 20106, "Sync")):
            async with connect(ws_url(server, token=token), proxy=None) as ws:
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(WAIT):
                        await ws.recv()
            assert ws.close_code == 4401 and words in (ws.close_reason or "")
            refused = await bystander.command("update_token", token=token)
            assert (refused["ok"], refused["error"]["code"], refused["error"]["status"]) == (False, code, 401)
            assert await twilsock_init_status(server, token) == (401, code)
            async with httpx.AsyncClient(auth=BASIC) as http:
                response = await http.post(
                    documents_url(server, service, sid), data={"Data": f'{{"n": {code}}}'}
                )
            assert response.status_code == 200, response.text
            await bystander.wait_until(
                lambda p, n=code: any(
                    e["event"] == "updated" and e["document"]["data"] == {"n": n} for e in p.events
                )
            )
        assert bystander.close_code is None
    finally:
        await bystander.close()


async def twilsock_init_status(server: ServerProcess, token: str) -> tuple[int, int]:
    """The status code and errorCode of a Twilsock ``init`` with ``token``, as the official SDK sends it."""
    url = server.base_url.replace("http://", "ws://") + "/v3/wsconnect"
    async with connect(url, proxy=None) as ws:
        message_id = twilsock_codec.new_message_id()
        await ws.send(twilsock_codec.encode_frame({"id": message_id, "method": "init", "token": token}, b""))
        async with asyncio.timeout(WAIT):
            while True:
                frame = twilsock_codec.decode_frame(await ws.recv())
                if frame.method == "reply" and frame.id == message_id:
                    status = frame.header["status"]
                    return status["code"], status["errorCode"]


async def test_a_token_for_another_service_is_forbidden(server: ServerProcess, service: str) -> None:
    token = twilio_token("alice", service)
    assert await refused_with_url(ws_url(server, token=token, service="default")) == 4403
    # Naming the token's own service is allowed: the connection is accepted.
    async with connect(ws_url(server, token=token, service=service), proxy=None) as ws:
        connected = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert (connected["event"], connected["service_sid"]) == ("connected", service)


async def refused_with_url(url: str) -> int | None:
    async with connect(url, proxy=None) as ws:
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT):
                await ws.recv()
        return ws.close_code


async def test_token_lifetimes(server: ServerProcess, service: str) -> None:
    """Three connections with tokens of a few seconds, run side by side to wait only once."""
    await asyncio.gather(
        _closes_when_its_token_expires(server, service),
        _update_token_keeps_the_connection(server, service),
        _client_refreshes_its_token_in_time(server, service),
    )


async def _closes_when_its_token_expires(server: ServerProcess, service: str) -> None:
    token = twilio_token("bob", service, ttl=2)
    peer = await Peer.connect(ws_url(server, token=token), basic=False)
    # The warning comes at once: less than a minute is left.
    await peer.wait_until(lambda p: any(e["event"] == "token_expiring" for e in p.events))
    assert await peer.wait_closed() == 4410
    # At the token's own expiry, not after the verifier's leeway.
    assert expires_at(token) - 0.1 <= time.time() < expires_at(token) + DEFAULT_LEEWAY


async def _update_token_keeps_the_connection(server: ServerProcess, service: str) -> None:
    # Three seconds (at least two left after int() rounding) to replace it before it runs out.
    first = twilio_token("carol", service, ttl=3)
    peer = await Peer.connect(ws_url(server, token=first), basic=False)
    try:
        forged = twilio_token("carol", service, secret="wrong-secret-" + "y" * 32)
        refused = await peer.command("update_token", token=forged)
        assert (refused["ok"], refused["error"]["code"], refused["error"]["status"]) == (False, 20107, 401)
        other_identity = await peer.command("update_token", token=twilio_token("mallory", service))
        assert (other_identity["ok"], other_identity["error"]["status"]) == (False, 401)
        fresh = twilio_token("carol", service)
        assert await peer.ok("update_token", token=fresh) == {
            "id": 3,
            "ok": True,
            "expires_at": expires_at(fresh),
        }
        await asyncio.sleep(max(0.0, expires_at(first) + 1 - time.time()))
        await peer.ok("ping")
        assert peer.close_code is None
    finally:
        await peer.close()


async def _client_refreshes_its_token_in_time(server: ServerProcess, service: str) -> None:
    minted: list[str] = []

    async def provider() -> str:
        # A short first token, so that the server asks for a new one straight away.
        minted.append(twilio_token("dave", service, ttl=3 if not minted else 3600))
        return minted[-1]

    states: list[ConnectionState] = []
    async with SyncClient(server.base_url, token_provider=provider, backoff=FAST_BACKOFF) as client:
        client.on("connection_state", states.append)
        connection = client.connection_id
        await eventually(lambda: len(minted) == 2)
        await asyncio.sleep(max(0.0, expires_at(minted[0]) + 1 - time.time()))
        doc = await client.document("still-here")
        assert doc.created_by == "dave"
        assert (client.connection_id, states) == (connection, [])


async def test_client_gets_a_new_token_after_4410(server: ServerProcess, service: str) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return twilio_token("erin", service)

    expired = twilio_token("erin", service, valid_until=int(time.time()) - 60)
    client = SyncClient(server.base_url, token=expired, token_provider=provider, backoff=FAST_BACKOFF)
    async with client:
        assert (client.state, client.identity, calls) == ("connected", "erin", 1)
