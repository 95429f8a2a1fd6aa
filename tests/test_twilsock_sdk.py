"""The unmodified official Twilio Sync JS SDK (``tests/js``) against a real server process.

Each test runs ``tests/js/sdk_scenarios.js`` with Node and tokens minted by the official ``twilio``
library; the restart test reads the scenario's progress lines and takes its own server down and up
between them. Without Node or ``tests/js/node_modules`` (``npm ci --prefix tests/js``) the tests skip,
unless the ``CI`` variable is set: then they fail, so CI never silently loses them.
"""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.support.processes import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, RedisProcess, ServerProcess
from tests.support.sdk import JS_DIR, access_token, missing_node_sdk, require

SCRIPT = JS_DIR / "sdk_scenarios.js"
AUTH = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
# The SDK's reconnect backoff starts at 1 s and doubles; on a loaded 2-core machine a restart plus a
# few backoff steps can take a while, so the restart scenario waits generously.
RECONNECT_MS = 90_000


@pytest.fixture(scope="module", autouse=True)
def _require_node() -> None:
    require(missing_node_sdk(), "the JS SDK test")


@pytest.fixture(scope="module")
def service(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/v1/Services", data={"FriendlyName": "js-sdk"}, auth=AUTH)
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


@pytest.fixture
def name() -> Iterator[str]:
    yield "doc-" + secrets.token_hex(6)


def ws_url(server: ServerProcess) -> str:
    return server.base_url.replace("http://", "ws://") + "/v3/wsconnect"


def run_scenario(server: ServerProcess, scenario: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(SCRIPT), scenario, ws_url(server), json.dumps(args)],
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
    tokens = [access_token(service, "alice"), access_token(service, "bob")]
    result = run_scenario(server, "setUpdate", tokens=tokens, name=name)
    assert result["same"]
    assert result["b_saw"] == {"greeting": "hello", "n": 1}
    assert result["a_saw"] == {"greeting": "hello", "n": 2, "from": "b"}
    rest = httpx.get(f"{server.base_url}/v1/Services/{service}/Documents/{name}", auth=AUTH).json()
    assert rest["data"] == result["a_saw"]
    assert rest["revision"] == result["revision"] == "2"


def test_concurrent_mutates_from_two_clients_all_land(server: ServerProcess, service: str, name: str) -> None:
    tokens = [access_token(service, "alice"), access_token(service, "bob")]
    result = run_scenario(server, "mutate", tokens=tokens, name=name, perClient=5)
    assert result == {"a": 10, "b": 10}
    rest = httpx.get(f"{server.base_url}/v1/Services/{service}/Documents/{name}", auth=AUTH).json()
    assert rest["data"] == {"count": 10}


def test_remove_and_ttl_expiry_fire_removed_on_the_other_client(
    server: ServerProcess, service: str, name: str
) -> None:
    tokens = [access_token(service, "alice"), access_token(service, "bob")]
    result = run_scenario(server, "removed", tokens=tokens, name=name, ttlName=name + "-ttl")
    assert result["removed_local"] is False
    assert result["expired_local"] is False
    assert result["expires"] is not None


def test_rest_and_sdk_writes_reach_each_other(server: ServerProcess, service: str, name: str) -> None:
    rest_url = f"{server.base_url}/v1/Services/{service}/Documents/{name}"
    result = run_scenario(
        server,
        "rest",
        tokens=[access_token(service, "alice")],
        name=name,
        restUrl=rest_url,
        auth=f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}",
    )
    assert result["sdk_saw"] == {"from": "rest"}
    rest = httpx.get(rest_url, auth=AUTH).json()
    assert rest["data"] == {"from": "sdk"}
    assert rest["sid"] == result["sid"]


def test_errors_come_back_as_sdk_errors(server: ServerProcess, service: str, name: str) -> None:
    result = run_scenario(server, "errors", tokens=[access_token(service, "alice")], name=name)
    assert result["missing"] == {"status": 404, "code": 54100}
    assert result["list"]["status"] == 404
    assert result["duplicate"]["status"] == 409
    assert result["data"] == {"x": 2}


def test_a_bad_token_is_denied(server: ServerProcess, service: str) -> None:
    result = run_scenario(server, "badToken", token="not-a-token")
    assert result["state"] == "denied"
    assert result["expired"] is False


def test_an_expired_token_emits_token_expired(server: ServerProcess, service: str) -> None:
    result = run_scenario(server, "badToken", token=access_token(service, "alice", expired=True))
    assert result["state"] == "denied"
    assert result["expired"] is True


def test_short_lived_token_warns_then_expires(server: ServerProcess, service: str) -> None:
    result = run_scenario(server, "expiring", token=access_token(service, "alice", ttl=3))
    assert result == {"expired": True}


def test_update_token_keeps_the_session(server: ServerProcess, service: str, name: str) -> None:
    result = run_scenario(
        server,
        "expiring",
        token=access_token(service, "alice", ttl=3),
        freshToken=access_token(service, "alice"),
        name=name,
    )
    assert result == {"expired": False, "state": "connected", "data": {"still": "here"}}


def test_access_control_through_the_sdk(server: ServerProcess, name: str) -> None:
    """The unmodified SDK on an ACL-enabled service: refusals are SyncErrors 403/54007."""
    service = httpx.post(f"{server.base_url}/v1/Services", data={"AclEnabled": "true"}, auth=AUTH).json()[
        "sid"
    ]
    documents = f"{server.base_url}/v1/Services/{service}/Documents"
    names = {"none": name + "-none", "read": name + "-read", "write": name + "-write", "fresh": name + "-new"}
    rights = {"none": None, "read": ("true", "false", "false"), "write": ("true", "true", "false")}
    for key, flags in rights.items():
        created = httpx.post(documents, data={"UniqueName": names[key], "Data": '{"v":0}'}, auth=AUTH)
        assert created.status_code == 201
        if flags is not None:
            read, write, manage = flags
            granted = httpx.post(
                f"{documents}/{names[key]}/Permissions/alice",
                data={"Read": read, "Write": write, "Manage": manage},
                auth=AUTH,
            )
            assert granted.status_code == 200
    result = run_scenario(
        server,
        "acl",
        token=access_token(service, "alice"),
        names=names,
        restUrl=f"{documents}/{names['read']}/Permissions/alice",
        auth=f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}",
        timeout=45.0,
    )
    forbidden = {"status": 403, "code": 54007}
    assert result["open_without_read"] == forbidden
    assert result["create"] == forbidden
    assert result["read_data"] == {"v": 0}
    assert result["set_with_read_only"] == forbidden
    assert result["written"] == {"written": True}
    assert result["remove_without_manage"] == forbidden
    assert result["revoked"] == forbidden
    # Nothing refused was applied.
    assert httpx.get(f"{documents}/{names['read']}", auth=AUTH).json()["data"] == {"v": 0}
    assert httpx.get(f"{documents}/{names['write']}", auth=AUTH).status_code == 200
    assert httpx.get(f"{documents}/{names['fresh']}", auth=AUTH).status_code == 404


def test_a_refused_token_update_is_the_sdks_own_error(server: ServerProcess, service: str) -> None:
    result = run_scenario(
        server,
        "refusedUpdate",
        token=access_token(service, "alice"),
        otherToken=access_token(service, "mallory"),
    )
    # The SDK turns a 401 whose status reads UNAUTHORIZED into its "token rejected" error (and then
    # considers itself denied: its own state machine's choice, not a close by the server).
    assert result == {"refused": True, "status": 400, "code": 51130, "state": "denied"}


class LiveScenario:
    """A scenario running in the background; :meth:`wait_for` reads its ``{"phase": ...}`` lines."""

    def __init__(self, server: ServerProcess, scenario: str, stderr_path: Path, **args: Any) -> None:
        self.server = server
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        with stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                ["node", str(SCRIPT), scenario, ws_url(server), json.dumps(args)],
                cwd=JS_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, phase: str, timeout: float) -> dict[str, Any]:
        """The next line of ``phase`` (``"result"`` for the final one); fails on an earlier result."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {phase!r} from the scenario within {timeout:g}s\n{self._logs()}")
            if line is None:
                pytest.fail(f"the scenario exited before {phase!r}\n{self._logs()}")
            if not line.startswith("{"):
                continue
            message: dict[str, Any] = json.loads(line)
            if "ok" in message:
                assert message.pop("ok"), f"{message.get('error')}\n{self._logs()}"
                assert phase == "result", f"the scenario ended before {phase!r}: {message}"
                return message
            if message.get("phase") == phase:
                return message

    def _logs(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-2000:]
        return f"{stderr}\n{self.server.log_tail()}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def rest_write(server: ServerProcess, url_path: str, data: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base_url}{url_path}", data={"Data": json.dumps(data)}, auth=AUTH, timeout=30.0
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.mark.parametrize("crash", [True, False], ids=["killed", "stopped"])
def test_the_client_reconnects_and_catches_up_after_a_server_restart(
    redis_proc: RedisProcess, tmp_path: Path, service: str, name: str, crash: bool
) -> None:
    """The SDK reconnects by itself, re-establishes its subscription and gets what it missed.

    One write goes through a second server on the same Redis while the SDK's server is down (only a
    replay can deliver it); another right after the restart (a replay or a live event, whichever
    comes first). Either way the client must end on the last one, firing ``updated``.
    """
    doc_path = f"/v1/Services/{service}/Documents/{name}"
    main = ServerProcess(tmp_path / "main", redis_url=redis_proc.url)
    other = ServerProcess(tmp_path / "other", redis_url=redis_proc.url)
    expected = {"after": "restart", "n": 2}
    scenario: LiveScenario | None = None
    try:
        main.start()
        other.start()
        scenario = LiveScenario(
            main,
            "restart",
            tmp_path / "node.stderr",
            tokens=[access_token(service, "alice")],
            name=name,
            expected=expected,
            restUrl=f"{main.base_url}{doc_path}",
            auth=f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}",
            reconnectMs=RECONNECT_MS,
        )
        assert scenario.wait_for("subscribed", 60)["revision"] == "0"
        if crash:
            main.kill()  # no close frame: the SDK sees the TCP connection drop
        else:
            main.stop()  # SIGTERM: uvicorn closes the websocket as it shuts down
        assert scenario.wait_for("lost", 30)["state"] != "connected"
        missed = rest_write(other, doc_path, {"while": "down", "n": 1})
        main.start()
        last = rest_write(main, doc_path, expected)
        result = scenario.wait_for("result", RECONNECT_MS / 1000 + 30)
    finally:
        if scenario is not None:
            scenario.close()
        main.stop()
        other.stop()

    assert (missed["revision"], last["revision"]) == ("1", "2")
    assert result["caught_up"] == {"data": expected, "isLocal": False, "revision": "2"}
    assert {"data": expected, "isLocal": False, "revision": "2"} in result["updates"]
    assert all(not update["isLocal"] for update in result["updates"])
    # connected, then something else while the server is away ("connecting", and the raw "retrying"
    # the SDK passes on for each failed attempt), then connected again; never denied nor given up.
    states = result["states"]
    first = states.index("connected")
    assert any(state != "connected" for state in states[first:]), states
    assert states[-1] == "connected", states
    assert "denied" not in states and "disconnected" not in states, states
    assert result["final"] == {"data": {"live": True}, "revision": "3", "state": "connected"}
