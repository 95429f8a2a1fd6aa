"""The HTTP side of webhooks: Twilio's request for a webhook, posted with httpx.

Each receiver (a webhook URL) has a client of its own, so a connection pool of its own with
keep-alive, and at most ``concurrency`` requests at once (:attr:`Receiver.slots`, taken by the caller
before it decides to post): a slow or dead receiver holds only its own connections, never another's,
even when another URL is served by the same host. An attempt that does not complete within
``timeout`` seconds (15, Twilio's limit), connection and all, fails; only a 2xx answer delivers;
redirects are not followed.

A URL with credentials (``https://user:secret@host/hook``) is posted with them as Basic auth, and
signed without them, as the receiver sees its own URL. Nothing here logs; what callers may log of a
URL is :func:`describe` (no credentials, no query).
"""

from __future__ import annotations

import asyncio
import logging
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


class Receiver:
    """One receiver: its own pooled client, and :attr:`slots` bounding the requests in flight."""

    def __init__(self, *, concurrency: int, timeout: float) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.in_flight = 0
        self.last_used = time.monotonic()
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, pool=None),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.perf_counter()
        self.in_flight += 1
        status: int | None = None
        try:
            # httpx's timeouts are per phase; this bounds the whole attempt.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(url, content=body, headers=headers)
            status = response.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timed out after {self._timeout:g} s"
        except httpx.HTTPError as exc:
            error = _error_text(exc, url)
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
        return Outcome(not error, status, error, time.perf_counter() - started)

    async def aclose(self) -> None:
        await self._client.aclose()


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

    def receiver(self, url: str) -> Receiver:
        found = self._receivers.get(url)
        if found is None:
            found = self._receivers[url] = Receiver(concurrency=self._concurrency, timeout=self.timeout)
        return found

    def request(self, webhook: Webhook) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the webhook's request: the same on every attempt."""
        params = webhook.params(self._account_sid)
        headers = {
            "Content-Type": FORM,
            SIGNATURE_HEADER: signature(self._auth_token, signed_url(webhook.url), params),
            IDEMPOTENCY_HEADER: webhook.token,
        }
        return urlencode(params).encode(), headers

    async def send(self, receiver: Receiver, webhook: Webhook) -> Outcome:
        """One attempt (the caller holds one of ``receiver.slots``)."""
        body, headers = self.request(webhook)
        return await receiver.post(webhook.url, body, headers)

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
