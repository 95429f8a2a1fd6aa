"""The client library's public surface and its pure parts (no server): exports, imports, errors,
backoff, URLs and the bounded event stream."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import sync_client
from sync_client import (
    Backoff,
    DocumentRemoved,
    DocumentUpdated,
    EventsOverflowError,
    EventStream,
    NotFoundError,
    RateLimitedError,
    RevisionMismatchError,
    SyncClient,
    SyncClientError,
    UniqueNameConflictError,
)
from sync_client.connection import websocket_url
from sync_client.errors import InvalidRequestError, error_from_reply

ROOT = Path(__file__).resolve().parents[1]


def test_exported_members() -> None:
    assert sorted(sync_client.__all__) == sorted(
        [
            "AuthenticationError",
            "Backoff",
            "ConnectionClosedError",
            "ConnectionDeniedError",
            "ConnectionState",
            "DocumentAccessRevoked",
            "DocumentEvent",
            "DocumentRemoved",
            "DocumentUpdated",
            "EventStream",
            "EventsOverflowError",
            "InvalidRequestError",
            "NotFoundError",
            "PermissionDeniedError",
            "RateLimitedError",
            "RequestTimeoutError",
            "RevisionMismatchError",
            "SyncClient",
            "SyncClientError",
            "SyncDocument",
            "UniqueNameConflictError",
        ]
    )
    for name in sync_client.__all__:
        assert hasattr(sync_client, name), name


def test_client_does_not_import_the_server() -> None:
    code = "import sys, sync_client; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    forbidden = ("sync_server", "starlette", "redis", "uvicorn")
    assert [m for m in loaded if m.split(".")[0] in forbidden] == []


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (54103, 412, RevisionMismatchError),
        (54100, 404, NotFoundError),
        (20404, 404, NotFoundError),
        (54301, 409, UniqueNameConflictError),
        (54009, 429, RateLimitedError),
        (20001, 400, InvalidRequestError),
        (54302, 400, InvalidRequestError),
        (99999, 404, NotFoundError),
        (99999, 500, SyncClientError),
    ],
)
def test_error_replies_map_to_the_hierarchy(code: int, status: int, expected: type[SyncClientError]) -> None:
    error = error_from_reply(code, status, "message")
    assert type(error) is expected
    assert (error.code, error.status, error.message) == (code, status, "message")


def test_backoff_grows_is_jittered_and_capped() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0)
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = [backoff.delay(attempt, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff.delay(10_000) <= 2.0
    assert 0.4 <= backoff.delay(0, slow=True, rng=rng) <= 0.8
    with pytest.raises(ValueError):
        Backoff(initial=0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8080", "ws://h:8080/ws"),
        ("https://h/", "wss://h/ws"),
        ("ws://h:1/ws", "ws://h:1/ws"),
        ("wss://h/custom/path?x=1", "wss://h/custom/path?x=1"),
    ],
)
def test_websocket_url(url: str, expected: str) -> None:
    assert websocket_url(url) == expected


def test_client_needs_exactly_one_kind_of_credentials() -> None:
    with pytest.raises(ValueError):
        SyncClient("http://h")
    with pytest.raises(ValueError):
        SyncClient("http://h", token="t", basic=("AC", "x"))
    with pytest.raises(ValueError):
        SyncClient("ftp://h", token="t")


def _updated(revision: int) -> DocumentUpdated:
    return DocumentUpdated("ET1", None, format(revision, "x"), None, {}, datetime.now(UTC))


async def test_event_stream_is_bounded_and_ends() -> None:
    closed: list[EventStream] = []
    stream = EventStream(3, closed.append)
    for revision in range(5):
        stream.put(_updated(revision))
    # The three that fit are delivered, then the overflow is reported, then the stream is over.
    assert [(await anext(stream)).revision for _ in range(3)] == ["0", "1", "2"]
    with pytest.raises(EventsOverflowError):
        await anext(stream)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert closed == [stream]

    stream = EventStream(10, closed.append)
    stream.put(_updated(1))
    stream.put(DocumentRemoved("ET1", None, "1", "deleted"))
    stream.end()
    assert [type(event) async for event in stream] == [DocumentUpdated, DocumentRemoved]
