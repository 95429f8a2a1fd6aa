"""The unmodified official Twilio Sync JS SDK (``tests/js``) against a real server process.

Each test runs ``tests/js/sdk_scenarios.js`` with Node and tokens minted by the official ``twilio``
library. Without Node or ``tests/js/node_modules`` (``npm ci --prefix tests/js``) the tests skip,
unless the ``CI`` variable is set: then they fail, so CI never silently loses them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import SyncGrant

from tests.support.processes import (
    REPO_ROOT,
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
)

JS_DIR = REPO_ROOT / "tests" / "js"
SCRIPT = JS_DIR / "sdk_scenarios.js"
AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "twilio-sync").is_dir():
        return "tests/js/node_modules is missing (run: npm ci --prefix tests/js)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_node() -> None:
    missing = _node_missing()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the JS SDK tests cannot run in CI: {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def service(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/v1/Services", data={"FriendlyName": "js-sdk"}, auth=AUTH)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


@pytest.fixture
def name() -> Iterator[str]:
    yield "doc-" + secrets.token_hex(6)


def token(service: str, identity: str, ttl: int = 600, *, expired: bool = False) -> str:
    jwt = AccessToken(
        TEST_ACCOUNT_SID,
        TEST_API_KEY_SID,
        TEST_API_KEY_SECRET,
        identity=identity,
        ttl=-600 if expired else ttl,
    )
    jwt.add_grant(SyncGrant(service_sid=service))
    return str(jwt.to_jwt())


def run_scenario(server: ServerProcess, scenario: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    ws_url = server.base_url.replace("http://", "ws://") + "/v3/wsconnect"
    done = subprocess.run(
        ["node", str(SCRIPT), scenario, ws_url, json.dumps(args)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output (exit {done.returncode}):\n{done.stderr[-2000:]}\n{server.log_tail()}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert result.pop("ok"), f"{result.get('error')}\n{done.stderr[-2000:]}\n{server.log_tail()}"
    return result


def test_two_clients_see_each_others_set_and_update(server: ServerProcess, service: str, name: str) -> None:
    tokens = [token(service, "alice"), token(service, "bob")]
    result = run_scenario(server, "setUpdate", tokens=tokens, name=name)
    assert result["same"]
    assert result["b_saw"] == {"greeting": "hello", "n": 1}
    assert result["a_saw"] == {"greeting": "hello", "n": 2, "from": "b"}
    rest = httpx.get(f"{server.base_url}/v1/Services/{service}/Documents/{name}", auth=AUTH).json()
    assert rest["data"] == result["a_saw"]
    assert rest["revision"] == result["revision"] == "2"


def test_concurrent_mutates_from_two_clients_all_land(server: ServerProcess, service: str, name: str) -> None:
    tokens = [token(service, "alice"), token(service, "bob")]
    result = run_scenario(server, "mutate", tokens=tokens, name=name, perClient=5)
    assert result == {"a": 10, "b": 10}
    rest = httpx.get(f"{server.base_url}/v1/Services/{service}/Documents/{name}", auth=AUTH).json()
    assert rest["data"] == {"count": 10}


def test_remove_and_ttl_expiry_fire_removed_on_the_other_client(
    server: ServerProcess, service: str, name: str
) -> None:
    tokens = [token(service, "alice"), token(service, "bob")]
    result = run_scenario(server, "removed", tokens=tokens, name=name, ttlName=name + "-ttl")
    assert result["removed_local"] is False
    assert result["expired_local"] is False
    assert result["expires"] is not None


def test_rest_and_sdk_writes_reach_each_other(server: ServerProcess, service: str, name: str) -> None:
    rest_url = f"{server.base_url}/v1/Services/{service}/Documents/{name}"
    result = run_scenario(
        server,
        "rest",
        tokens=[token(service, "alice")],
        name=name,
        restUrl=rest_url,
        auth=f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}",
    )
    assert result["sdk_saw"] == {"from": "rest"}
    rest = httpx.get(rest_url, auth=AUTH).json()
    assert rest["data"] == {"from": "sdk"}
    assert rest["sid"] == result["sid"]


def test_errors_come_back_as_sdk_errors(server: ServerProcess, service: str, name: str) -> None:
    result = run_scenario(server, "errors", tokens=[token(service, "alice")], name=name)
    assert result["missing"] == {"status": 404, "code": 54100}
    assert result["list"]["status"] == 404
    assert result["duplicate"]["status"] == 409
    assert result["data"] == {"x": 2}


def test_a_bad_token_is_denied(server: ServerProcess, service: str) -> None:
    result = run_scenario(server, "badToken", token="not-a-token")
    assert result["state"] == "denied"
    assert result["expired"] is False


def test_an_expired_token_emits_token_expired(server: ServerProcess, service: str) -> None:
    result = run_scenario(server, "badToken", token=token(service, "alice", expired=True))
    assert result["state"] == "denied"
    assert result["expired"] is True


def test_short_lived_token_warns_then_expires(server: ServerProcess, service: str) -> None:
    result = run_scenario(server, "expiring", token=token(service, "alice", ttl=3))
    assert result == {"expired": True}


def test_update_token_keeps_the_session(server: ServerProcess, service: str, name: str) -> None:
    result = run_scenario(
        server,
        "expiring",
        token=token(service, "alice", ttl=3),
        freshToken=token(service, "alice"),
        name=name,
    )
    assert result == {"expired": False, "state": "connected", "data": {"still": "here"}}
