"""One connection's document subscriptions: hub registration, the subscribe race, and ordering.

Per subscriber, revisions only ever increase. The race between a subscribe and concurrent writes is
closed like this: register with the hub first (which returns once Redis routes the channel's events
here), *then* read the snapshot. Events that arrive in between are held (``pending``) until the
adapter has written its subscribe reply and calls :meth:`Subscriptions.activate`; then those newer
than the snapshot are delivered, the rest dropped. From there on an event is delivered only if its
revision is above the last one delivered.

Revocation: a ``revoked`` control event on a document's channel ends the subscription of a
restricted principal it names (see :meth:`DocumentEvent.revokes`), in channel order, so no write
published after the permission change reaches that subscriber. No permission is looked up per
delivery: the check is the subscribe's own read (atomic with the read right in the store's script).

Delivery: the hub hands each event to all of a channel's subscribers through :func:`fan_out`, which
applies the same rules as :meth:`Subscriptions.on_event` to an update in one flat loop (the hot path
of a popular document: no Python call per subscriber) and leaves every other case to it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sync_server import errors, metrics
from sync_server.documents import Document, DocumentService
from sync_server.events import DocumentEvent
from sync_server.gateway.frames import OutFrame
from sync_server.gateway.outbox import Outbox
from sync_server.hub import Hub, Subscriber, call_each
from sync_server.ids import DOCUMENT_PREFIX, is_sid
from sync_server.principal import Principal

log = logging.getLogger(__name__)

# Events held for one document while its snapshot is read; a burst larger than this during one
# subscribe round trip means the client could not keep up anyway.
MAX_PENDING = 256
BATCH_WRITE_BYTES = 64 * 1024
"""Frames of a batch written to a connection at once, at most (a single bigger frame goes alone):
the transport's buffer can then exceed its high-water mark by no more than one such write, as with
one frame at a time, before the frames that follow are queued against the connection's bound."""


@dataclass(slots=True)
class _Subscription:
    sid: str
    unique_name: str | None
    channel: str
    revision: int = -1
    pending: list[DocumentEvent] | None = field(default_factory=list)


class Subscriptions:
    """Implements :class:`sync_server.hub.Subscriber` for one connection (the hub reaches it through
    :func:`fan_out`)."""

    __slots__ = (
        "_build",
        "_by_sid",
        "_documents",
        "_hub",
        "_limit",
        "_on_overflow",
        "_on_revoked",
        "_outbox",
        "_principal",
        "_protocol",
        "_releasing",
        "_tally",
    )

    def __init__(
        self,
        hub: Hub,
        documents: DocumentService,
        principal: Principal,
        limit: int,
        outbox: Outbox,
        protocol: str,
        build: Callable[[DocumentEvent], OutFrame],
        on_overflow: Callable[[], None],
        on_revoked: Callable[[str, str | None], None],
    ) -> None:
        """Each event to relay is written to ``outbox`` as the frame ``build`` makes of it (once per
        event and ``protocol``, see events.py); ``on_overflow`` is called when the connection must
        end (too slow, or events lost); ``on_revoked`` when access control ended a subscription."""
        self._hub = hub
        self._documents = documents
        self._principal = principal
        self._limit = limit
        self._outbox = outbox
        self._protocol = protocol
        self._build = build
        # Deliveries are tallied in a plain integer and counted once per event (metrics.py).
        self._tally = metrics.tally(protocol)
        self._on_overflow = on_overflow
        self._on_revoked = on_revoked
        self._by_sid: dict[str, _Subscription] = {}
        # Made when first needed: an idle connection holds no set for it.
        self._releasing: set[asyncio.Task[None]] | None = None

    def __len__(self) -> int:
        return len(self._by_sid)

    # -- hub.Subscriber -----------------------------------------------------------------------------

    def on_event(self, event: DocumentEvent) -> None:
        sub = self._by_sid.get(event.sid)
        if sub is None:
            return
        if sub.pending is not None:
            if len(sub.pending) >= MAX_PENDING:
                self._on_overflow()
                return
            sub.pending.append(event)
            return
        self._filter(sub, event)

    def on_hub_reset(self) -> None:
        # Events may have been lost: the connection must end so the client resubscribes.
        metrics.SUBSCRIPTIONS_OPEN.dec(len(self._by_sid))
        self._by_sid.clear()
        self._on_overflow()

    def _filter(self, sub: _Subscription, event: DocumentEvent) -> None:
        kind = event.kind
        if kind == "updated":
            assert event.revision is not None
            if event.revision <= sub.revision:
                return
            sub.revision = event.revision
        elif kind == "revoked":
            if not self._principal.restricted or not event.revokes(self._principal.identity):
                return
            self._end(sub)
            self._on_revoked(sub.sid, sub.unique_name)
            return
        else:
            self._end(sub)
        self._deliver(event)

    def _deliver(self, event: DocumentEvent) -> None:
        self._tally.count += 1
        self._outbox.send(event.frame(self._protocol, self._build))

    def _end(self, sub: _Subscription) -> None:
        # The hub drops us lazily (see _release): this runs inside its dispatch.
        if self._by_sid.pop(sub.sid, None) is not None:
            metrics.SUBSCRIPTIONS_OPEN.dec()
        self._release(sub)

    def _release(self, sub: _Subscription) -> None:
        # on_event is synchronous, so the hub is left in a task; the set keeps it referenced.
        task = asyncio.get_running_loop().create_task(self._hub.unsubscribe(sub.channel, self))
        if self._releasing is None:
            self._releasing = set()
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    # -- commands -----------------------------------------------------------------------------------

    async def subscribe(self, ident: str) -> Document:
        """Subscribes to a document by SID or unique name and returns its snapshot.

        The caller must write its reply and call :meth:`activate` without awaiting in between.
        """
        # By SID no lookup is needed first: the snapshot read after the hub subscription both checks
        # that the document exists and is the snapshot (one round trip for a resubscribe by SID).
        first: Document | None = None
        sid = ident
        if not is_sid(ident, DOCUMENT_PREFIX):
            first = await self._documents.fetch(self._principal, ident)
            sid = first.sid
        existing = self._by_sid.get(sid)
        if existing is not None:
            current = first or await self._documents.fetch(self._principal, sid)
            if existing.pending is None:
                existing.revision = max(existing.revision, current.revision)
            return current
        if len(self._by_sid) >= self._limit:
            raise errors.TooManySubscriptions(
                f"Too many subscriptions on this connection (limit {self._limit})"
            )
        # Interned: the subscribers of one document share one copy of its SID and channel name.
        sid = sys.intern(sid)
        channel = sys.intern(self._hub.document_channel(self._principal.service_sid, sid))
        sub = _Subscription(sid, None, channel)
        self._by_sid[sid] = sub
        metrics.SUBSCRIPTIONS_OPEN.inc()
        try:
            await self._hub.subscribe(channel, self)
            snapshot = await self._documents.fetch(self._principal, sid)
        except BaseException:
            if self._by_sid.pop(sid, None) is not None:
                metrics.SUBSCRIPTIONS_OPEN.dec()
            await self._hub.unsubscribe(channel, self)
            raise
        sub.unique_name = None if snapshot.unique_name is None else sys.intern(snapshot.unique_name)
        sub.revision = snapshot.revision
        return snapshot

    def activate(self, sid: str) -> None:
        """Delivers the events that arrived while the snapshot was read, newer ones only."""
        sub = self._by_sid.get(sid)
        if sub is None or sub.pending is None:
            return
        pending, sub.pending = sub.pending, None
        for event in pending:
            if self._by_sid.get(sid) is not sub:
                break
            self._filter(sub, event)
        metrics.flush_deliveries()

    async def unsubscribe(self, ident: str) -> bool:
        """Ends a subscription by SID or unique name; False if there was none."""
        sub = self._find(ident)
        if sub is None:
            return False
        del self._by_sid[sub.sid]
        metrics.SUBSCRIPTIONS_OPEN.dec()
        await self._hub.unsubscribe(sub.channel, self)
        return True

    def _find(self, ident: str) -> _Subscription | None:
        if is_sid(ident, DOCUMENT_PREFIX):
            return self._by_sid.get(ident)
        for sub in self._by_sid.values():
            if sub.unique_name == ident:
                return sub
        return None

    async def close(self) -> None:
        subs = list(self._by_sid.values())
        self._by_sid.clear()
        metrics.SUBSCRIPTIONS_OPEN.dec(len(subs))
        for sub in subs:
            await self._hub.unsubscribe(sub.channel, self)


def fan_out(events: Sequence[DocumentEvent], subscribers: Sequence[Subscriber]) -> None:
    """The hub's fan-out (``hub.FanOut``) for the gateway: events of one channel, in order, to every
    subscriber of it.

    Updates, the hot path (``bench/README.md``), take no Python call per connection: one loop checks
    each subscription's revision (:meth:`Subscriptions._filter`'s rule) and writes the events'
    frames, encoded once per protocol, straight into the connection's transport while its outbox
    allows that (``Outbox.direct``), else through ``Outbox.send`` (which queues or closes with
    4508). Several updates of a batch that a connection needs all of (the usual case: it held none
    of them yet) go out as one write of their frames back to back (up to :data:`BATCH_WRITE_BYTES`
    per write), one ``send()`` for all. A
    subscription still holding events for its snapshot, the other kinds of event and any other kind
    of subscriber take :meth:`Subscriptions.on_event`. One subscriber's failure is logged and does
    not keep the events from the others.
    """
    previous = -1
    for event in events:
        # A batch of updates in rising revisions (the store's order for one document); anything
        # else, or the unexpected, is handed out one event at a time.
        if event.kind != "updated" or event.revision is None or event.revision <= previous:
            for one in events:
                _fan_out_one(one, subscribers)
            return
        previous = event.revision
    _fan_out_updates(events, subscribers)


def _fan_out_updates(events: Sequence[DocumentEvent], subscribers: Sequence[Subscriber]) -> None:
    first = events[0]
    sid = first.sid
    oldest = first.revision
    assert oldest is not None
    newest = events[-1].revision
    assert newest is not None
    count = len(events)
    protocol: str | None = None
    chunks: list[tuple[bytes, list[OutFrame]]] = []
    for subscriber in subscribers:
        try:
            if type(subscriber) is not Subscriptions:
                for event in events:
                    subscriber.on_event(event)
                continue
            sub = subscriber._by_sid.get(sid)
            if sub is None:
                continue
            if sub.pending is not None or sub.revision >= oldest:
                # Holding events for its snapshot, or already past some of these: one by one.
                for event in events:
                    subscriber.on_event(event)
                continue
            sub.revision = newest
            subscriber._tally.count += count
            if subscriber._protocol is not protocol:
                protocol = subscriber._protocol
                chunks = _chunks([event.frame(protocol, subscriber._build) for event in events])
            outbox = subscriber._outbox
            for wire, frames in chunks:
                direct = outbox.direct
                if direct is not None:
                    direct.write(wire)
                else:
                    for frame in frames:
                        outbox.send(frame)
        except Exception:
            log.exception("subscriber failed on an event")


def _chunks(frames: list[OutFrame]) -> list[tuple[bytes, list[OutFrame]]]:
    """The frames in runs of at most :data:`BATCH_WRITE_BYTES` (or one frame), each run's wire joined."""
    chunks: list[tuple[bytes, list[OutFrame]]] = []
    run: list[OutFrame] = []
    size = 0
    for frame in frames:
        if run and size + len(frame.wire) > BATCH_WRITE_BYTES:
            chunks.append((b"".join([f.wire for f in run]), run))
            run, size = [], 0
        run.append(frame)
        size += len(frame.wire)
    chunks.append((b"".join([f.wire for f in run]), run))
    return chunks


def _fan_out_one(event: DocumentEvent, subscribers: Sequence[Subscriber]) -> None:
    if event.kind == "updated":
        _fan_out_updates((event,), subscribers)
    else:
        call_each((event,), subscribers)
