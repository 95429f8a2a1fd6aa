"""Webhooks across outages and crashes, with real server processes on one Redis and a real receiver:
written changes reach the receiver, all of them, in revision order per document, whether the receiver
was down, the delivering process was killed (SIGKILL) with webhooks in its hands, or it was stopped
(SIGTERM) mid-delivery; a receiver that never recovers ends in the dead letters, which the CLI lists
and replays. Retry waits, horizons and leases are short here (settings), so each test takes seconds."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    RedisProcess,
    ServerProcess,
    run_cli,
    start_redis,
    subprocess_env,
)
from tests.support.realtime import eventually
from tests.support.webhooks import Received, Receiver, valid_signature
from tests.test_metrics import moved, scrape

FAST = {
    "SYNC_WEBHOOK_FIRST_WAIT": "0.05",
    "SYNC_WEBHOOK_MAX_WAIT": "0.3",
    "SYNC_WEBHOOK_TIMEOUT": "5",
    "SYNC_WEBHOOK_LEASE": "2",
}
DOCS = 5
REVISIONS = 6


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = start_redis(tmp_path / "redis")
    yield proc
    proc.stop()


@pytest.fixture
def path(receiver: Receiver) -> Iterator[str]:
    yield "/" + secrets.token_hex(4)
    receiver.answer(200)


def server(tmp_path: Path, redis: RedisProcess, name: str, **env: str) -> ServerProcess:
    return ServerProcess(tmp_path / name, redis_url=redis.url, env={**FAST, **env})


def webhook_service(base_url: str, url: str) -> str:
    form = {"WebhookUrl": url, "WebhooksFromRestEnabled": "true"}
    response = httpx.post(f"{base_url}/v1/Services", data=form, auth=(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN))
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


def write(proc: ServerProcess, service: str, name: str, revision: int) -> None:
    """Revision 0 creates the document, the next ones update it."""
    docs = f"{proc.base_url}/v1/Services/{service}/Documents"
    if revision == 0:
        response = httpx.post(docs, data={"UniqueName": name, "Data": '{"r":0}'}, auth=proc.auth)
    else:
        response = httpx.post(f"{docs}/{name}", data={"Data": json.dumps({"r": revision})}, auth=proc.auth)
    assert response.is_success, response.text


def write_until_accepted(proc: ServerProcess, service: str, name: str, revision: int) -> None:
    """Right after a Redis restart a write may find it loading: refused (503), nothing is written,
    and the next attempt goes through."""
    docs = f"{proc.base_url}/v1/Services/{service}/Documents/{name}"
    for _ in range(50):
        response = httpx.post(docs, data={"Data": json.dumps({"r": revision})}, auth=proc.auth)
        if response.is_success:
            return
        assert response.status_code == 503, response.text
        time.sleep(0.1)
    raise AssertionError(f"{name} never accepted revision {revision}")


def revisions_by_document(delivered: list[Received]) -> dict[str, list[int]]:
    """Each document's delivered revisions, in arrival order, repeats included."""
    found: dict[str, list[int]] = {}
    for received in delivered:
        found.setdefault(received.params["DocumentUniqueName"], []).append(
            int(received.params["DocumentRevision"])
        )
    return found


def assert_complete_and_in_order(delivered: list[Received], expected: dict[str, int]) -> None:
    """Every revision of every document arrived, and no document's went backwards (a repeat after a
    crash may come, with the same idempotency token, right behind the first)."""
    got = revisions_by_document(delivered)
    assert sorted(got) == sorted(expected)
    for name, count in expected.items():
        assert got[name] == sorted(got[name]), (name, got[name])
        assert set(got[name]) == set(range(count)), (name, got[name])
    for received in delivered:
        assert json.loads(received.params["DocumentData"]) == {"r": int(received.params["DocumentRevision"])}


async def test_an_outage_and_a_crash_lose_nothing(
    tmp_path: Path, redis: RedisProcess, receiver: Receiver, path: str
) -> None:
    url = receiver.url(path)
    receiver.answer(lambda received: 503 if received.path == path else 200)
    first = server(tmp_path, redis, "first", SYNC_WEBHOOK_RETRY_FOR="600").start()
    second = server(tmp_path, redis, "second", SYNC_WEBHOOK_RETRY_FOR="600")
    try:
        service = webhook_service(first.base_url, url)
        names = [f"doc{i}" for i in range(DOCS)]
        for revision in range(REVISIONS - 2):
            for name in names:
                write(first, service, name, revision)
        await receiver.wait_for(lambda r: len(r.of(path)) >= 10)  # the outage is felt, retries run
        for name in names:  # and the last changes before the crash may still be in the stream
            write(first, service, name, REVISIONS - 2)
        first.kill()
        second.start()
        for name in names:  # written through the new process, while the receiver is still down
            write(second, service, name, REVISIONS - 1)
        receiver.answer(200)
        expected = len(names) * REVISIONS
        await receiver.wait_for(lambda r: len({x.token for x in r.delivered(path)}) == expected, within=30)
        assert_complete_and_in_order(receiver.delivered(path), dict.fromkeys(names, REVISIONS))
        assert all(valid_signature(url, r) for r in receiver.delivered(path))
    finally:
        first.kill()
        second.kill()


async def test_webhooks_in_the_hands_of_a_killed_process_are_taken_over(
    tmp_path: Path, redis: RedisProcess, receiver: Receiver, path: str
) -> None:
    """The receiver takes requests and never answers: the webhooks are in flight, read from the
    stream and not settled, when the process dies. Another process claims them once the dead one's
    leases lapse (SYNC_WEBHOOK_LEASE, 2 s here)."""
    url = receiver.url(path)
    receiver.hang()
    first = server(tmp_path, redis, "first").start()
    second = server(tmp_path, redis, "second")
    try:
        service = webhook_service(first.base_url, url)
        names = [f"held{i}" for i in range(DOCS)]
        for revision in range(3):
            for name in names:
                write(first, service, name, revision)
        await receiver.wait_for(lambda r: len(r.of(path)) >= DOCS)  # every document's head in flight
        first.kill()
        killed = time.monotonic()
        receiver.answer(200)
        second.start()
        await receiver.wait_for(lambda r: len({x.token for x in r.delivered(path)}) == DOCS * 3, within=30)
        assert time.monotonic() - killed < 30
        assert_complete_and_in_order(receiver.delivered(path), dict.fromkeys(names, 3))
    finally:
        first.kill()
        second.kill()


async def test_sigterm_finishes_what_is_in_flight_and_hands_back_the_rest(
    tmp_path: Path, redis: RedisProcess, receiver: Receiver, path: str
) -> None:
    """A long lease (30 s) here: the second process delivers the rest at once only because the
    first gave its leases back."""
    url = receiver.url(path)
    receiver.slow(path, 1.0)
    first = server(tmp_path, redis, "first", SYNC_WEBHOOK_LEASE="30").start()
    second = server(tmp_path, redis, "second", SYNC_WEBHOOK_LEASE="30")
    try:
        service = webhook_service(first.base_url, url)
        names = [f"term{i}" for i in range(DOCS)]
        for revision in range(4):
            for name in names:
                write(first, service, name, revision)
        await receiver.wait_for(lambda r: len(r.of(path)) >= 1)
        assert first.stop() == 0  # the requests in flight finish (1 s), then it gives back and exits
        stopped = time.monotonic()
        second.start()
        await receiver.wait_for(lambda r: len(r.delivered(path)) == DOCS * 4, within=30)
        assert time.monotonic() - stopped < 15  # not the 30 s of a lapsed lease
        assert_complete_and_in_order(receiver.delivered(path), dict.fromkeys(names, 4))
        # Finished, not abandoned: nothing had to be sent twice.
        assert len({r.token for r in receiver.delivered(path)}) == DOCS * 4
    finally:
        receiver.slow(path, 0)
        first.kill()
        second.kill()


def dead_letters(redis: RedisProcess, *args: str) -> str:
    done = run_cli("webhooks", "dead-letters", *args, "--redis-url", redis.url, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_receiver_that_never_recovers_ends_in_dead_letters_and_replay_delivers(
    tmp_path: Path, redis: RedisProcess, receiver: Receiver, path: str
) -> None:
    url = receiver.url(path)
    receiver.answer(lambda received: 500 if received.path == path else 200)
    proc = server(tmp_path, redis, "only", SYNC_WEBHOOK_RETRY_FOR="1").start()
    try:
        service = webhook_service(proc.base_url, url)
        before = scrape(proc)
        for revision in range(3):
            write(proc, service, "doomed", revision)

        def listed() -> list[dict[str, object]]:
            letters: list[dict[str, object]] = json.loads(dead_letters(redis, "list", "--json"))
            return letters

        await eventually(
            lambda: moved(before, scrape(proc), "sync_webhook_dead_letters_total") == 3, within=20
        )
        letters = listed()
        assert [(x["event_type"], x["document_revision"]) for x in letters] == [
            ("document_created", 0),
            ("document_updated", 1),
            ("document_updated", 2),
        ]
        assert {x["service_sid"] for x in letters} == {service}
        assert all(x["last_error"] == "HTTP 500" or x["last_error"] == "" for x in letters)
        assert letters[0]["attempts"] >= 1  # type: ignore[operator]
        tokens = [str(x["token"]) for x in letters]
        assert {r.token for r in receiver.of(path)} <= set(tokens)
        text = dead_letters(redis)  # `list` is the default: one line each
        assert all(t in text for t in tokens)
        assert moved(before, scrape(proc), "sync_webhook_deliveries_total", outcome="delivered") == 0

        refused = run_cli("webhooks", "dead-letters", "purge", "--redis-url", redis.url, env=subprocess_env())
        assert refused.returncode == 1 and "needs --service, --token or --all" in refused.stderr

        receiver.answer(200)
        assert "replayed 3 dead letters" in dead_letters(redis, "replay", "--service", service)
        await receiver.wait_for(lambda r: len(r.delivered(path)) == 3)
        replayed = receiver.delivered(path)
        assert [r.token for r in replayed] == tokens  # the same tokens: a receiver can tell repeats
        assert [r.params["DocumentRevision"] for r in replayed] == ["0", "1", "2"]
        assert all(valid_signature(url, r) for r in replayed)
        assert listed() == []
    finally:
        proc.kill()


async def test_a_redis_restart_under_delivery_loses_no_written_webhook(
    tmp_path: Path, receiver: Receiver, path: str
) -> None:
    """Redis (with AOF, as the embedded one) restarts while webhooks flow: writes refused meanwhile
    got a 503 and were never written; every one that succeeded is delivered, in order."""
    redis = start_redis(tmp_path / "aof-redis", persistent=True)
    proc = server(tmp_path, redis, "only").start()
    try:
        service = webhook_service(proc.base_url, receiver.url(path))
        written: dict[str, int] = {}
        for revision in range(3):
            for name in ("r0", "r1", "r2"):
                write(proc, service, name, revision)
                written[name] = revision + 1
        redis.restart()
        for revision in range(3, 5):
            for name in ("r0", "r1", "r2"):
                write_until_accepted(proc, service, name, revision)
                written[name] = revision + 1
        await receiver.wait_for(lambda r: len({x.token for x in r.delivered(path)}) == 15, within=30)
        assert_complete_and_in_order(receiver.delivered(path), written)
    finally:
        proc.kill()
        redis.stop()


def test_the_cli_finds_the_embedded_redis_running_or_not(tmp_path: Path) -> None:
    """Without --redis-url the CLI reads the embedded Redis of --data-dir: through the running
    server's socket, or one it starts itself when no server runs."""
    proc = ServerProcess(tmp_path, redis_url=None, env=FAST).start()
    args = ("webhooks", "dead-letters", "list", "--data-dir", str(proc.data_dir))
    try:
        running = run_cli(*args, env=subprocess_env())
        assert running.returncode == 0, running.stderr
        assert "0 dead letters" in running.stderr
    finally:
        assert proc.stop() == 0
    stopped = run_cli(*args, "--json", env=subprocess_env())
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == []
