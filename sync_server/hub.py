"""The pub/sub hub: one Redis subscription per document channel per process, shared by all local
subscribers, released when the last one leaves.

Contract:
- :meth:`Hub.subscribe` returns only once Redis has confirmed the channel subscription, so a
  snapshot read *after* it returns cannot miss a later write: the write's event is already routed
  here. (Events may also arrive for writes older than the snapshot; subscribers drop those by
  revision.)
- Each Redis message is decoded once into a :class:`DocumentEvent` and handed to every local
  subscriber of its channel by a plain synchronous call, in Redis order (= revision order). A
  subscriber must never block: it writes to a bounded per-connection buffer or closes the
  connection (see gateway/outbox.py).
- If the pub/sub connection to Redis is lost, events may have been missed: every subscriber is told
  through :meth:`Subscriber.on_hub_reset` (connections then close with a reconnect code, and
  clients resubscribe with their last revision and converge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server import errors
from sync_server.events import DocumentEvent, decode_event

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0


class Subscriber(Protocol):
    def on_event(self, event: DocumentEvent) -> None:
        """Called once per event of a subscribed channel. Must not block or raise."""

    def on_hub_reset(self) -> None:
        """Called when events may have been lost (Redis pub/sub connection dropped)."""


class Hub:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        self._channels: dict[bytes, set[Subscriber]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen_forever(), name="hub-listener")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Adds ``subscriber`` to ``channel``; returns once Redis routes the channel's events here."""
        key = channel.encode()
        subscribers = self._channels.get(key)
        if subscribers is not None:
            subscribers.add(subscriber)
            confirmed = self._confirmed.get(key)
            if confirmed is not None:  # another local subscriber's SUBSCRIBE is still in flight
                try:
                    await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
                except (TimeoutError, asyncio.CancelledError):
                    task = asyncio.current_task()
                    if (task is not None and task.cancelling()) or (
                        confirmed.done() and not confirmed.cancelled()
                    ):
                        raise
                    # That SUBSCRIBE failed or the pub/sub connection was reset meanwhile.
                    self._drop(key, subscriber)
                    raise errors.UnavailableError("The event stream is unavailable, try again") from None
            return
        self._channels[key] = {subscriber}
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmed[key] = confirmed
        try:
            pubsub = await self._ensure_pubsub()
            await pubsub.subscribe(key)
            self._wake.set()
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            self._drop(key, subscriber)
            raise errors.UnavailableError("The event stream is unavailable, try again") from exc

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Removes ``subscriber``; the Redis subscription goes with the channel's last local subscriber."""
        key = channel.encode()
        if self._drop(key, subscriber) and self._pubsub is not None:
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                await self._pubsub.unsubscribe(key)

    def _drop(self, key: bytes, subscriber: Subscriber) -> bool:
        """Forgets one subscriber; True when it was the channel's last."""
        subscribers = self._channels.get(key)
        if subscribers is None:
            return False
        subscribers.discard(subscriber)
        if subscribers:
            return False
        del self._channels[key]
        pending = self._confirmed.pop(key, None)
        if pending is not None and not pending.done():
            pending.cancel()
        return True

    async def _ensure_pubsub(self) -> PubSub:
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            return self._pubsub

    async def _listen_forever(self) -> None:
        while True:
            pubsub = await self._ensure_pubsub()
            try:
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub connection lost (%s); resetting subscribers", type(exc).__name__)
                await self._reset()
                await asyncio.sleep(0.5)

    async def _listen(self, pubsub: PubSub) -> None:
        task = asyncio.current_task()
        while True:
            # redis-py can swallow a cancellation that lands inside a read; without this check a
            # shutdown could wait on this loop for ever.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if not pubsub.subscribed:
                # redis-py's PubSub cannot read before its first SUBSCRIBE: sleep until one is sent.
                self._wake.clear()
                await self._wake.wait()
                continue
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._dispatch(message["channel"], message["data"])
            elif kind == "subscribe":
                confirmed = self._confirmed.pop(message["channel"], None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        subscribers = self._channels.get(channel)
        if not subscribers:
            return
        try:
            event = decode_event(payload)
        except (ValueError, KeyError):
            log.error("dropped an undecodable event on %r", channel)
            return
        # A copy: a subscriber may unsubscribe itself (e.g. on 'removed') while we iterate.
        for subscriber in tuple(subscribers):
            try:
                subscriber.on_event(event)
            except Exception:
                log.exception("subscriber failed on an event")

    async def _reset(self) -> None:
        """Drops the broken pub/sub connection and tells every subscriber that events may be lost."""
        old, self._pubsub = self._pubsub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.aclose()  # type: ignore[no-untyped-call]
        subscribers = {s for group in self._channels.values() for s in group}
        self._channels.clear()
        for pending in self._confirmed.values():
            if not pending.done():
                pending.cancel()
        self._confirmed.clear()
        for subscriber in subscribers:
            with contextlib.suppress(Exception):
                subscriber.on_hub_reset()
