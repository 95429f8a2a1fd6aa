"""A Redis that refuses writes: out of memory (``maxmemory`` with ``noeviction``), busy, read-only.

Real processes throughout: a Redis of the test's own with a memory limit, a real server, REST and
websocket clients. What must hold: a documented error (507/20507 when full, 503/20503 for the
transient states), one warning in the log and no traceback, ``/healthz`` degraded while it lasts,
reads still served, nothing half-applied and no event for a refused write, and writes working
again the moment Redis has room.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis._parsers import BaseParser
from redis.exceptions import ResponseError

from sync_server import errors
from sync_server.embedded import EPHEMERAL_ARGS
from sync_server.store.conditions import (
    CONDITIONS,
    HEALTH_WINDOW,
    WARN_INTERVAL,
    ConditionLog,
    condition_of,
)
from tests.support.processes import RedisProcess, ServerProcess
from tests.support.realtime import WAIT, Peer, documents_url, eventually, ws_url

FULL = (507, 20507)
UNAVAILABLE = (503, 20503)
FILLER = "x" * 15_000  # near the 16 KiB data limit: few writes fill the headroom
OOM_DETAIL = "Redis is out of memory (maxmemory reached)"


@pytest.fixture(scope="module")
def small_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    args = (*EPHEMERAL_ARGS, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    proc = RedisProcess(tmp_path_factory.mktemp("small-redis"), args=args, unix_socket=False).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(small_redis: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(small_redis.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def full_server(
    small_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("full-server"), redis_url=small_redis.url).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http(full_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=full_server.base_url, auth=full_server.auth, timeout=WAIT
    ) as client:
        yield client


async def new_service(http: httpx.AsyncClient) -> str:
    response = await http.post("/v1/Services", data={"FriendlyName": "full"})
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


def error_of(response: httpx.Response) -> tuple[int, int]:
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}, body
    assert body["status"] == response.status_code
    return response.status_code, body["code"]


def reply_error(reply: dict[str, Any]) -> tuple[int, int]:
    assert reply["ok"] is False, reply
    return reply["error"]["status"], reply["error"]["code"]


def used_memory(admin: redis.Redis) -> int:
    info: dict[str, Any] = admin.info("memory")
    return int(info["used_memory"])


async def fill(http: httpx.AsyncClient, service: str) -> int:
    """Creates documents until Redis refuses one; returns how many it took."""
    for count in range(2000):
        response = await http.post(
            f"/v1/Services/{service}/Documents", data={"Data": f'{{"fill":"{FILLER}"}}'}
        )
        if response.status_code != 201:
            assert error_of(response) == FULL, response.text
            return count
    raise AssertionError("Redis never filled up")


def log_text(server: ServerProcess) -> str:
    return server.log_path.read_text(errors="replace")


async def test_a_full_redis_refuses_writes_cleanly_and_recovers(
    full_server: ServerProcess, admin: redis.Redis, http: httpx.AsyncClient
) -> None:
    service = await new_service(http)
    docs = f"/v1/Services/{service}/Documents"
    created = await http.post(docs, data={"UniqueName": "victim", "Data": '{"v":0}'})
    assert created.status_code == 201, created.text
    subscriber = await Peer.connect(ws_url(full_server, service=service, identity="watcher"))
    writer = await Peer.connect(ws_url(full_server, service=service, identity="writer"))
    try:
        opened = await subscriber.ok("open", name="victim", mode="open_existing")
        assert opened["document"]["revision"] == "0"

        # Little headroom above what is used now, so that a few dozen documents fill it.
        admin.config_set("maxmemory", used_memory(admin) + 512 * 1024)
        assert await fill(http, service) > 0
        # Hold it full: once a reply's buffers are freed, usage may dip just under the limit, and
        # a small write would then pass (Redis checks before each command).
        admin.config_set("maxmemory", used_memory(admin) - 256 * 1024)

        # Every kind of write: the documented error, on REST and on the socket.
        refused_create = await http.post(docs, data={"UniqueName": "late", "Data": '{"a":1}'})
        assert error_of(refused_create) == FULL
        assert "full" in refused_create.json()["message"]
        refused_update = await http.post(f"{docs}/victim", data={"Data": '{"v":1}'})
        assert error_of(refused_update) == FULL
        refused_ttl = await http.post(f"{docs}/victim", data={"Ttl": "60"})
        assert error_of(refused_ttl) == FULL
        assert reply_error(await writer.command("set", doc="victim", data={"v": 2})) == FULL
        assert reply_error(await writer.command("update", doc="victim", data={"w": 3})) == FULL
        assert reply_error(await writer.command("open", name="fresh", mode="create_new", data={})) == FULL
        service_create = await http.post("/v1/Services", data={"FriendlyName": "one more"})
        assert error_of(service_create) == FULL

        health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "degraded", "detail": OOM_DETAIL}

        # Reads still work, and the refused writes changed nothing.
        fetched = await http.get(f"{docs}/victim")
        assert fetched.status_code == 200
        assert (fetched.json()["revision"], fetched.json()["data"]) == ("0", {"v": 0})
        assert (await http.get(f"{docs}/late")).status_code == 404
        assert (await http.get(docs, params={"PageSize": 5})).status_code == 200
        assert (await http.get(f"/v1/Services/{service}")).status_code == 200
        assert (await http.get("/v1/Services")).status_code == 200
        socket_read = await writer.ok("fetch", doc="victim")
        assert socket_read["document"]["revision"] == "0"

        # Memory freed (here: a higher limit): writes work again at once, and healthz says so.
        admin.config_set("maxmemory", 0)
        health = await http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        updated = await http.post(f"{docs}/victim", data={"Data": '{"v":"after"}'})
        assert updated.status_code == 200, updated.text
        assert updated.json()["revision"] == "1"
        assert (await http.post(docs, data={"UniqueName": "late", "Data": "{}"})).status_code == 201
        assert (await writer.ok("set", doc="victim", data={"v": "socket"}))["document"]["revision"] == "2"

        # The subscriber saw revision 1 first: no event was published for any refused write.
        await subscriber.wait_until(lambda peer: len(peer.events) >= 2)
        revisions = [(e["document"]["revision"], e["document"]["data"]) for e in subscriber.events]
        assert revisions == [("1", {"v": "after"}), ("2", {"v": "socket"})]
    finally:
        admin.config_set("maxmemory", "64mb")
        await subscriber.close()
        await writer.close()
    log = log_text(full_server)
    assert "Traceback" not in log, log[-3000:]
    # Dozens of refusals, one warning (the next is due only after 30 s).
    assert log.count(OOM_DETAIL) == 1, log[-3000:]


async def test_deletes_still_work_when_full_and_free_memory(
    full_server: ServerProcess, admin: redis.Redis, http: httpx.AsyncClient
) -> None:
    service = await new_service(http)
    docs = f"/v1/Services/{service}/Documents"
    try:
        admin.config_set("maxmemory", used_memory(admin) + 256 * 1024)
        count = await fill(http, service)
        listed = await http.get(docs, params={"PageSize": 100})
        sids = [doc["sid"] for doc in listed.json()["documents"]]
        assert len(sids) == count
        # Deleting needs no memory, so a full store can be emptied through the API.
        for sid in sids:
            assert (await http.delete(f"{docs}/{sid}")).status_code == 204
        await eventually(lambda: used_memory(admin) < int(admin.config_get("maxmemory")["maxmemory"]))
        recreated = await http.post(docs, data={"Data": '{"room":true}'})
        assert recreated.status_code == 201, recreated.text
    finally:
        admin.config_set("maxmemory", "64mb")


def _run_busy_script(url: str, started: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    started.set()
    try:
        # Loops until SCRIPT KILL (it writes nothing, so it may be killed).
        client.eval("while true do end", 0)
    except ResponseError:
        pass
    finally:
        client.close()


async def test_a_busy_redis_answers_503_and_healthz_says_why(
    small_redis: RedisProcess, tmp_path: Path, admin: redis.Redis
) -> None:
    admin.config_set("lua-time-limit", 100)  # busy-reply-threshold since Redis 7
    server = ServerProcess(tmp_path, redis_url=small_redis.url).start()
    started = threading.Event()
    busy = threading.Thread(target=_run_busy_script, args=(small_redis.url, started), daemon=True)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth, timeout=WAIT) as http:
            service = await new_service(http)
            busy.start()
            started.wait(WAIT)
            await asyncio.sleep(0.3)  # past the 100 ms after which Redis answers BUSY
            refused = await http.post(f"/v1/Services/{service}/Documents", data={"Data": "{}"})
            assert error_of(refused) == UNAVAILABLE
            # The routes that call redis-py directly map the reply the same way.
            assert error_of(await http.get("/v1/Services")) == UNAVAILABLE
            assert error_of(await http.get(f"/v1/Services/{service}")) == UNAVAILABLE
            health = await http.get("/healthz")
            assert (health.status_code, health.json()["status"]) == (503, "degraded")
            assert health.json()["detail"] == "Redis is busy running a script"
            redis.Redis.from_url(small_redis.url).script_kill()
            busy.join(WAIT)
            created = await http.post(f"/v1/Services/{service}/Documents", data={"Data": "{}"})
            assert created.status_code == 201, created.text
            health = await http.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
    finally:
        if busy.is_alive():
            redis.Redis.from_url(small_redis.url).script_kill()
        server.kill()
        admin.config_set("lua-time-limit", 5000)
    assert "Traceback" not in server.log_tail(200)


async def test_a_read_only_replica_answers_503_and_reads_still_work(
    small_redis: RedisProcess, tmp_path: Path, admin: redis.Redis
) -> None:
    server = ServerProcess(tmp_path, redis_url=small_redis.url).start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth, timeout=WAIT) as http:
            service = await new_service(http)
            docs = documents_url(server, service)
            assert (await http.post(docs, data={"UniqueName": "kept", "Data": '{"k":1}'})).status_code == 201
            # A replica of a master that does not exist: it keeps its data and refuses writes.
            admin.replicaof("127.0.0.1", "1")
            try:
                refused = await http.post(f"{docs}/kept", data={"Data": '{"k":2}'})
                assert error_of(refused) == UNAVAILABLE
                fetched = await http.get(f"{docs}/kept")
                assert (fetched.status_code, fetched.json()["data"]) == (200, {"k": 1})
                health = await http.get("/healthz")
                assert health.json() == {"status": "degraded", "detail": "Redis is a read-only replica"}
            finally:
                admin.replicaof("NO", "ONE")
            assert (await http.post(f"{docs}/kept", data={"Data": '{"k":3}'})).status_code == 200
            # A write went through: the condition is over.
            health = await http.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
    finally:
        server.kill()
    assert "Traceback" not in server.log_tail(200)


async def test_healthz_without_permission_for_info_relies_on_replies(
    small_redis: RedisProcess, tmp_path: Path, admin: redis.Redis
) -> None:
    # Hosted Redis often denies INFO (ACL category @dangerous) to the application's user.
    admin.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-info"],
    )
    url = f"redis://limited:secret@127.0.0.1:{small_redis.port}/0"
    server = ServerProcess(tmp_path, redis_url=url).start()  # healthz answered 200 without INFO
    try:
        async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth, timeout=WAIT) as http:
            service = await new_service(http)
            docs = f"/v1/Services/{service}/Documents"
            admin.config_set("maxmemory", used_memory(admin) + 256 * 1024)
            await fill(http, service)
            health = await http.get("/healthz")
            assert (health.status_code, health.json()) == (503, {"status": "degraded", "detail": OOM_DETAIL})
            admin.config_set("maxmemory", 0)
            assert (await http.post(docs, data={"Data": "{}"})).status_code == 201
            health = await http.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
    finally:
        admin.config_set("maxmemory", "64mb")
        server.kill()
    assert "Traceback" not in server.log_tail(200)


# -- the mapping itself, pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "word"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'. script: 7d, on @user_script:9.", "OOM"),
        # Redis 6 wraps an error raised inside a script:
        (
            "ERR Error running script (call to f_7d): @user_script:9: @user_script: 9: "
            "-OOM command not allowed when used memory > 'maxmemory'.",
            "OOM",
        ),
        ("LOADING Redis is loading the dataset in memory", "LOADING"),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", "BUSY"),
        ("READONLY You can't write against a read only replica.", "READONLY"),
        (
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
            "MISCONF",
        ),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "MASTERDOWN"),
        ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN"),
        ("NOREPLICAS Not enough good replicas to write.", "NOREPLICAS"),
        ("ERR user_script:3: Script attempted to access nonexistent global variable 'x'", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
        ("ERR unknown command 'OOM'", None),
    ],
)
def test_condition_of_a_reply(reply: str, word: str | None) -> None:
    # As the scripts' multiplexed connection raises it, and as redis-py's parser does.
    for exc in (ResponseError(reply), BaseParser.parse_error(reply)):
        condition = condition_of(exc)
        assert (None if condition is None else condition.word) == word, (reply, type(exc))


def test_full_is_507_and_an_unavailable_error() -> None:
    condition = CONDITIONS["OOM"]
    error = condition.error("full")
    assert isinstance(error, errors.StoreFull) and isinstance(error, errors.UnavailableError)
    assert (error.status, error.code) == FULL
    assert error.to_dict()["more_info"].endswith("/20507")
    busy = CONDITIONS["BUSY"].error("busy")
    assert (busy.status, busy.code) == UNAVAILABLE


def test_warnings_are_throttled_per_condition(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    conditions = ConditionLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="sync_server.store"):
        for _ in range(5):
            conditions.seen(CONDITIONS["OOM"])
        conditions.seen(CONDITIONS["BUSY"])
        now[0] += WARN_INTERVAL
        conditions.seen(CONDITIONS["OOM"])
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert messages[0].startswith(OOM_DETAIL + ": answering 507/20507")
    assert messages[1].startswith("Redis is busy running a script: answering 503/20503")
    assert "(4 more since the last warning)" in messages[2]
    assert [c.word for c in conditions.recent(within=WARN_INTERVAL)] == ["OOM", "BUSY"]
    conditions.answered()  # any reply ends BUSY, not OOM (reads work when full)
    assert [c.word for c in conditions.recent(within=WARN_INTERVAL)] == ["OOM"]
    assert conditions.recent(within=1.0) == [CONDITIONS["OOM"]]
    now[0] += HEALTH_WINDOW + 1
    assert conditions.recent() == []
