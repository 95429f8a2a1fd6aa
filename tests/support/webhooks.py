"""A real HTTP webhook receiver for tests: a ``ThreadingHTTPServer`` on a free loopback port.

It records every request (path, headers, the form as sent), answers with a status the test sets
(:meth:`Receiver.answer`), slowly on some paths (:meth:`Receiver.slow`), or holds requests unanswered
(:meth:`Receiver.hang`) to stand for a receiver that does not answer in time. It counts the requests
in flight per path (:attr:`Receiver.most_at_once`). Tests read :attr:`Receiver.requests` and wait
with :meth:`Receiver.wait_for`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from twilio.request_validator import RequestValidator

from tests.support.processes import TEST_AUTH_TOKEN

__all__ = ["Received", "Receiver", "valid_signature"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    params: dict[str, str]
    """The form, decoded (every parameter appears once)."""
    at: float
    status: int
    """What the receiver answered (0: it held the request and never answered)."""

    @property
    def token(self) -> str:
        return self.headers.get("i-twilio-idempotency-token", "")

    @property
    def signature(self) -> str:
        return self.headers.get("x-twilio-signature", "")


def valid_signature(url: str, received: Received) -> bool:
    """What a receiver does with the official ``twilio`` library."""
    return bool(RequestValidator(TEST_AUTH_TOKEN).validate(url, received.params, received.signature))


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._status: Callable[[Received], int] = lambda received: 200
        self._hang = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._delays: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        """The most requests a path had in flight at once."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the sender's pool expects

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                params = dict(parse_qsl(body, keep_blank_values=True))
                headers = {name.lower(): value for name, value in self.headers.items()}
                pending = Received(self.path, headers, params, time.time(), 0)
                with receiver._lock:
                    now = receiver._in_flight[self.path] = receiver._in_flight.get(self.path, 0) + 1
                    receiver.most_at_once[self.path] = max(now, receiver.most_at_once.get(self.path, 0))
                try:
                    self._answer(pending, headers, params)
                finally:
                    with receiver._lock:
                        receiver._in_flight[self.path] -= 1

            def _answer(self, pending: Received, headers: dict[str, str], params: dict[str, str]) -> None:
                time.sleep(receiver._delays.get(self.path, 0))
                if receiver._hang.is_set():
                    with receiver._lock:
                        receiver.requests.append(pending)
                    receiver._released.wait(60)
                    self.close_connection = True
                    return
                status = receiver._status(pending)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, headers, params, pending.at, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, status: int | Callable[[Received], int]) -> None:
        """Answers every request from now on with ``status`` (or what it returns for the request)."""
        self._status = status if callable(status) else (lambda received: status)
        self._hang.clear()
        self._released.set()

    def slow(self, path: str, seconds: float) -> None:
        """Answers requests to ``path`` only after ``seconds``."""
        self._delays[path] = seconds

    def hang(self) -> None:
        """Reads requests and never answers them, until :meth:`answer`."""
        self._released.clear()
        self._hang.set()

    def delivered(self, path: str | None = None) -> list[Received]:
        """The requests answered with a 2xx, in arrival order (of ``path`` only, if given)."""
        with self._lock:
            found = list(self.requests)
        return [r for r in found if 200 <= r.status < 300 and (path is None or r.path == path)]

    def of(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    async def wait_for(self, condition: Callable[[Receiver], bool], within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not condition(self):
            if time.monotonic() > deadline:
                paths = sorted({r.path for r in self.requests})
                counts = {path: (len(self.of(path)), len(self.delivered(path))) for path in paths}
                raise AssertionError(
                    f"receiver: not met within {within:g} s; (requests, delivered): {counts}"
                )
            await asyncio.sleep(0.02)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()


def receiver_fixture() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver
