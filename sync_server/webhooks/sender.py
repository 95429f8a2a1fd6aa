"""The HTTP side of webhooks: Twilio's request for a webhook, posted with httpx.

Each receiver (a webhook URL) has connections of its own, kept alive, and at most ``concurrency``
requests at once (:meth:`Receiver.slot`, taken by the caller before it decides to post): a slow or
dead receiver holds only its own connections, never another's, even when another URL is served by
the same host. An attempt that does not complete within ``timeout`` seconds (15, Twilio's limit),
connection and all, fails; only a 2xx answer delivers; redirects are not followed.

A URL with credentials (``https://user:secret@host/hook``) is posted with them as Basic auth, and
signed without them, as the receiver sees its own URL. Nothing here logs; what callers may log of a
URL is :func:`describe` (no credentials, no query).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from sync_server.webhooks.events import Webhook, describe
from sync_server.webhooks.signature import signature

# httpx logs every request's URL at INFO, and a webhook URL may carry credentials: this module logs
# what it should itself (lanes.py), with the URL's secrets left out.
logging.getLogger("httpx").setLevel(logging.WARNING)

USER_AGENT = "sync-server-webhooks/1"
SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    status: int | None
    """The HTTP status, None when there was no answer."""
    error: str
    """'' when delivered; else what went wrong (``HTTP 503``, ``timed out after 15 s``…), without
    anything secret of the URL."""
    seconds: float


def signed_url(url: str) -> str:
    """The URL as the receiver sees it, which the signature covers: without credentials."""
    scheme, separator, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    return scheme + separator + authority.rpartition("@")[2] + slash + tail


class Connection:
    """One keep-alive connection to a receiver: an httpx client limited to one connection. A pool of
    these per receiver, rather than one client with a pool of ``concurrency`` connections, because
    httpx checks every pooled connection on every request (about a third of its CPU per request
    with 16 connections, measured with py-spy)."""

    def __init__(self, url: httpx.URL | None, timeout: float, tls: ssl.SSLContext) -> None:
        self._url = url
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            verify=tls,
            timeout=httpx.Timeout(timeout, pool=None),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            follow_redirects=False,
        )

    async def post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.perf_counter()
        status: int | None = None
        if self._url is None:  # the scripts accept what REST validated, but stay safe with any text
            return Outcome(False, None, "invalid URL", 0.0)
        url = str(self._url)
        try:
            # The URL parsed once per receiver; httpx's timeouts are per phase, this bounds the whole.
            request = httpx.Request("POST", self._url, content=body, headers=headers)
            async with asyncio.timeout(self._timeout):
                response = await self._client.send(request)
            status = response.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timed out after {self._timeout:g} s"
        except httpx.HTTPError as exc:
            error = _error_text(exc, url)
        return Outcome(not error, status, error, time.perf_counter() - started)

    async def aclose(self) -> None:
        await self._client.aclose()


class Receiver:
    """One receiver: at most ``concurrency`` requests in flight, each on a connection of its own
    (:meth:`slot`), kept alive between them."""

    def __init__(self, url: str, *, concurrency: int, timeout: float, tls: ssl.SSLContext) -> None:
        self._url: httpx.URL | None
        try:
            self._url = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            self._url = None
        self._slots = asyncio.Semaphore(concurrency)
        self._free: list[Connection] = []
        self._timeout = timeout
        self._tls = tls
        self.in_flight = 0
        self.last_used = time.monotonic()

    def slot(self) -> _Slot:
        """``async with receiver.slot() as connection``: waits for one of the receiver's slots and
        lends its connection (the most recently used free one, so the others idle out)."""
        return _Slot(self)

    def _take(self) -> Connection:
        self.in_flight += 1
        return self._free.pop() if self._free else Connection(self._url, self._timeout, self._tls)

    def _give(self, connection: Connection) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()
        self._free.append(connection)

    async def aclose(self) -> None:
        connections, self._free = self._free, []
        for connection in connections:
            await connection.aclose()


class _Slot:
    """One use of a receiver's slot (a class, not a generator-based context manager: this runs for
    every webhook)."""

    __slots__ = ("_connection", "_receiver")

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._connection: Connection | None = None

    async def __aenter__(self) -> Connection:
        await self._receiver._slots.acquire()
        self._connection = self._receiver._take()
        return self._connection

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        self._receiver._give(self._connection)
        self._receiver._slots.release()


def _error_text(exc: Exception, url: str) -> str:
    text = str(exc).replace(url, describe(url)) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {text}"
    return f"{type(exc).__name__}: {text}"


class Sender:
    """Builds and posts webhooks for one account. Receivers are made on first use and closed after
    they have been idle for a while (:meth:`prune`)."""

    def __init__(self, account_sid: str, auth_token: str, *, timeout: float, concurrency: int) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self.timeout = timeout
        """Seconds one attempt may take, connection and answer."""
        self._concurrency = concurrency
        self._receivers: dict[str, Receiver] = {}
        self._tls: ssl.SSLContext | None = None

    def receiver(self, url: str) -> Receiver:
        found = self._receivers.get(url)
        if found is None:
            if self._tls is None:
                # httpx's default verification (certifi's CAs), made once: a context per connection
                # costs milliseconds each.
                self._tls = httpx.create_ssl_context()
            found = Receiver(url, concurrency=self._concurrency, timeout=self.timeout, tls=self._tls)
            self._receivers[url] = found
        return found

    def request(self, webhook: Webhook) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the webhook's request: the same on every attempt."""
        params = webhook.params(self._account_sid)
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": FORM,
            SIGNATURE_HEADER: signature(self._auth_token, signed_url(webhook.url), params),
            IDEMPOTENCY_HEADER: webhook.token,
        }
        return urlencode(params).encode(), headers

    async def send(self, connection: Connection, webhook: Webhook) -> Outcome:
        """One attempt, on a connection of one of the receiver's slots (:meth:`Receiver.slot`)."""
        body, headers = self.request(webhook)
        return await connection.post(body, headers)

    async def prune(self, idle: float) -> None:
        """Closes the receivers unused for ``idle`` seconds (none of their requests in flight)."""
        now = time.monotonic()
        for key, receiver in list(self._receivers.items()):
            if receiver.in_flight == 0 and now - receiver.last_used > idle:
                del self._receivers[key]
                await receiver.aclose()

    async def aclose(self) -> None:
        receivers, self._receivers = list(self._receivers.values()), {}
        for receiver in receivers:
            await receiver.aclose()
