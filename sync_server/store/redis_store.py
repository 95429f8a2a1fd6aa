"""The Redis implementation of the store contracts in ``base.py``.

Every document operation is one EVALSHA of a script in ``lua/``; the scripts reply with a status
word first (``ok``, ``nosvc``, ``nodoc``, ``dup``, ``rev``, ``big``, ``noperm``) so that expected
failures cost no Redis error round trip and are mapped to the error hierarchy here, in one place.
Redis's own refusals (out of memory, loading, read-only…) are mapped in ``conditions.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server import errors
from sync_server.ids import DOCUMENT_PREFIX, SERVICE_PREFIX, is_sid, new_sid
from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.base import WriteMode
from sync_server.store.conditions import ConditionLog, condition_of, unreachable
from sync_server.store.health import UNREACHABLE, Health
from sync_server.store.health import check as check_health
from sync_server.store.models import Document, Page, Permission, Service
from sync_server.store.multiplex import DEFAULT_TIMEOUT
from sync_server.store.scripts import ScriptRunner
from sync_server.validation import MAX_DATA_BYTES, check_data_size

if TYPE_CHECKING:
    from sync_server.store.cluster_client import ClusterRouter

T = TypeVar("T")

DEFAULT_ALIAS = "default"
PURGE_STEP = 500
"""Documents of deleted services that one sweep call purges at most: bounds how long one script holds
Redis (see lua/expire_sweep.lua)."""
SWEEP_AUDIT = 10
"""Expiry-index entries per partition that each sweep samples for a vanished document hash: small,
because every process sweeps every partition several times a second, and the case is rare (an
operator's EXPIRE, or volatile-* eviction)."""
STORING_SCRIPTS = frozenset({"doc_create", "doc_write"})
"""Scripts whose ``ok`` reply means Redis accepted a write that needs memory (see conditions.py)."""
COPIED_SETTINGS = frozenset({"acl_enabled", "webhook_url", "webhooks_from_rest_enabled"})
"""Service settings the document scripts read from each partition's copy (lua/svc_part.lua)."""
SERVICE_DEFAULTS: dict[str, str] = {
    "friendly_name": "",
    "unique_name": "",
    "webhook_url": "",
    "webhooks_from_rest_enabled": "0",
    "reachability_webhooks_enabled": "0",
    "reachability_debouncing_enabled": "0",
    "reachability_debouncing_window": "5000",
    "acl_enabled": "0",
}


def default_service_sid(account_sid: str) -> str:
    """The default service's SID, derived from the account so it is the same in every process and
    across restarts without any coordination."""
    digest = hashlib.sha256(f"default-service:{account_sid}".encode()).hexdigest()
    return SERVICE_PREFIX + digest[:32]


class RedisStore:
    """Documents, services and permissions on one Redis (see ``keys.py`` for the layout)."""

    def __init__(
        self,
        redis: Redis,
        account_sid: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        cluster: bool = False,
    ) -> None:
        """``timeout``: seconds a script may take to answer (see scripts.py); ``cluster``: the Redis
        is a cluster (one slot per script call, events by SPUBLISH)."""
        self.redis = redis
        self.account_sid = account_sid
        self.default_service_sid = default_service_sid(account_sid)
        self._scripts = ScriptRunner(redis, timeout=timeout)
        self.conditions = ConditionLog()
        self.cluster = cluster
        """On a cluster every script call stays in one slot, and events go out with SPUBLISH."""
        self.publish_command = "SPUBLISH" if cluster else "PUBLISH"
        """PUBLISH on standalone Redis (the hub SUBSCRIBEs), SPUBLISH on a cluster."""
        self.purge_step = PURGE_STEP
        self.last_purged = 0
        self.more_due = False

    async def detect_cluster(self) -> bool:
        """Connects the scripts and, if Redis is a cluster, switches to the cluster's ways (one slot
        per call, SPUBLISH). Called once at start; a Redis down then is detected on first use."""
        from sync_server.store.cluster_client import ClusterRouter

        try:
            await self._scripts.command("sync:{services}:layout", "EXISTS", "sync:{services}:layout")
        except (RedisError, OSError):  # unreachable or refusing: the first use decides
            return self.cluster
        if isinstance(self._scripts.connection, ClusterRouter) and not self.cluster:
            self.cluster = True
            self.publish_command = "SPUBLISH"
        return self.cluster

    @property
    def topology(self) -> ClusterRouter | None:
        """The cluster's slot map (the scripts' router), for the hub's sharded subscriptions; None on a
        standalone Redis (or before the first script call has connected)."""
        from sync_server.store.cluster_client import ClusterRouter

        connection = self._scripts.connection
        return connection if isinstance(connection, ClusterRouter) else None

    async def _decided(self) -> None:
        """Decides between a single Redis and a cluster before a call builds its arguments (the
        publish command, one slot per call) if the start could not: Redis was down then."""
        if self._scripts.connection is None:
            await self.detect_cluster()

    async def close(self) -> None:
        # Both connections: the scripts run on their own multiplexed one (store/scripts.py).
        await self._scripts.aclose()
        await self.redis.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers at all (it may still refuse writes: see :meth:`health`)."""
        return (await self.health()).status != "unavailable"

    async def health(self) -> Health:
        """One ``INFO memory`` per master (one on a single Redis), plus what recent replies said:
        see health.py."""
        try:
            connection = await self._scripts.connected()
        except (RedisError, OSError):
            return Health("unavailable", UNREACHABLE)
        return await check_health(connection, self.conditions)

    # -- running scripts ---------------------------------------------------------------------------

    async def _run(self, name: str, keys_: list[str], args: list[str | int | bytes]) -> Any:
        try:
            reply = await self._scripts.run(name, keys_, args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise unreachable(exc) from exc
        except ResponseError as exc:
            raise self._refusal(exc) from None
        if self.conditions.active:
            self.conditions.answered(wrote=name in STORING_SCRIPTS and reply[0] == b"ok")
        return reply

    def _refusal(self, exc: ResponseError) -> BaseException:
        """The client error for a Redis refusal (see conditions.py), or ``exc`` itself for a bug."""
        condition = condition_of(exc)
        return exc if condition is None else self.conditions.seen(condition)

    async def _run_in_partition(
        self,
        service_sid: str,
        partition: int,
        name: str,
        document_sid: str | None,
        args: list[str | int | bytes],
    ) -> Any:
        """Runs a document script of one service in one partition (the keys and ARGV[1..3] of the
        scripts' header, lua/_prelude.lua), creating the default service on its first use.

        The hot path pays nothing for the alias: only a ``nosvc`` reply for the default service's SID
        (first use ever, or after someone deleted it) costs the extra creation round trips.
        """
        if self._scripts.connection is None:  # inline: the hot path pays one attribute read
            await self._decided()
        script_keys = keys.document_script_keys(partition, service_sid, document_sid)
        script_args: list[str | int | bytes] = [
            keys.prefix(partition),
            service_sid,
            self.publish_command,
            *args,
        ]
        reply = await self._run(name, script_keys, script_args)
        if reply[0] == b"nosvc" and service_sid == self.default_service_sid:
            await self.ensure_default_service()
            reply = await self._run(name, script_keys, script_args)
        if reply[0] == b"nosvc":
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        return reply

    async def _run_on(
        self,
        service_sid: str,
        principal: list[str | int | bytes],
        name: str,
        ident: str,
        args: list[str | int | bytes],
    ) -> Any:
        """Runs a document script on the document ``ident`` (a SID or a unique name) in its partition.

        A unique name whose document was migrated from the first layout into another partition has
        an alias in the name's partition: the reply ``moved`` sends the call there, once.
        """
        by_sid = _by_sid(ident)
        if by_sid == "1":
            return await self._run_in_partition(
                service_sid, keys.sid_partition(ident), name, ident, ["0", *principal, ident, by_sid, *args]
            )
        partition = keys.name_partition(service_sid, ident)
        reply = await self._run_in_partition(
            service_sid, partition, name, None, ["1", *principal, ident, by_sid, *args]
        )
        if reply[0] == b"moved":
            reply = await self._run_in_partition(
                service_sid, int(reply[1]), name, None, ["0", *principal, ident, by_sid, *args]
            )
        return reply

    async def _run_as(self, who: Principal, name: str, ident: str, args: list[str | int | bytes]) -> Any:
        """Runs a document script as ``who`` (the principal arguments every document script takes,
        see lua/_prelude.lua); a refusal by access control raises ``ForbiddenError``."""
        reply = await self._run_on(who.service_sid, _principal(who), name, ident, args)
        if reply[0] == b"forbidden":
            raise _forbidden(who)
        return reply

    # -- documents ---------------------------------------------------------------------------------

    async def create_document(
        self, who: Principal, unique_name: str | None, data: bytes, ttl: int
    ) -> Document:
        sid = keys.new_document_sid(who.service_sid, unique_name)
        partition = keys.sid_partition(sid)
        args: list[str | int | bytes] = ["0", *_principal(who), sid, unique_name or "", data, ttl]
        reply = await self._run_in_partition(who.service_sid, partition, "doc_create", sid, [*args, ""])
        if reply[0] == b"aliased" and unique_name:
            # A document migrated from the first layout may hold the name in another partition.
            elsewhere = int(reply[1])
            holder = await self._run_in_partition(
                who.service_sid, elsewhere, "doc_fetch", None, ["0", "", "", "", unique_name, "0"]
            )
            if holder[0] == b"ok":
                raise errors.UniqueNameConflict(f"Unique name already exists: {unique_name}")
            reply = await self._run_in_partition(
                who.service_sid, partition, "doc_create", sid, [*args, str(elsewhere)]
            )
        if reply[0] == b"forbidden":
            raise _forbidden(who)
        if reply[0] == b"dup":
            raise errors.UniqueNameConflict(f"Unique name already exists: {unique_name}")
        return Document.from_reply(who.service_sid, reply[1:])

    async def fetch_document(self, who: Principal, ident: str) -> Document:
        reply = await self._run_as(who, "doc_fetch", ident, [])
        return self._document(who.service_sid, ident, reply)

    async def write_document(
        self,
        who: Principal,
        ident: str,
        *,
        data: bytes | None,
        mode: WriteMode = "set",
        ttl: int | None = None,
        if_match: str | None = None,
    ) -> Document:
        args: list[str | int | bytes] = [
            b"" if data is None else data,
            mode,
            "" if ttl is None else ttl,
            if_match or "",
            MAX_DATA_BYTES,
        ]
        reply = await self._run_as(who, "doc_write", ident, args)
        status = reply[0]
        if status == b"rev":
            raise errors.RevisionMismatch(
                f"The revision of the Document does not match the expected revision "
                f"(expected {if_match}, current {reply[1].decode()})"
            )
        if status == b"big":
            check_data_size(int(reply[1]))
        return self._document(who.service_sid, ident, reply)

    async def delete_document(self, who: Principal, ident: str) -> Document:
        reply = await self._run_as(who, "doc_delete", ident, [])
        return self._document(who.service_sid, ident, reply)

    async def list_documents(
        self, service_sid: str, *, after: int | None, before: int | None, size: int
    ) -> Page[Document]:
        """One page in creation order: a merge of the service's 64 partition indexes.

        Each partition is asked for its next ``k`` live documents after the cursor (all partitions
        at once), plus one to tell whether it has more. Only a *certified* prefix of the merge is
        returned: the items up to the smallest last item among the partitions that had more, since
        none of those can hide an item before it. One refill round asks those partitions for more if
        that prefix is shorter than the page. So a page may be shorter than ``size`` (``more`` then
        still says whether a next one exists), the walk visits every document that exists for its
        whole duration exactly once, and a page costs O(partitions), not O(documents).
        The rounds read index entries only; a last one reads the page's own documents (doc_pick),
        so a page of 50 reads 50 documents rather than every one the merge looked at (~320).
        Three rounds at most, each one call per partition on a cluster, one call in all on
        standalone Redis. A document deleted between the rounds is left out of its page; the
        page's cursors stay the merge's, so the walk goes on exactly where it would have.
        """
        backwards = before is not None
        direction = "before" if backwards else "after"
        cursor = before if backwards else after
        split = None if cursor is None else keys.split_cursor(cursor)
        k = max(3, -(-2 * size // keys.PARTITIONS) + 2)

        def start_bound(partition: int) -> str:
            if split is None:
                return ""
            score, at = split
            # Items with the cursor's score lie beyond it only in partitions beyond its own.
            inclusive = partition < at if backwards else partition > at
            return str(score) if inclusive else f"({score}"

        listed: dict[int, str] = {}
        rows = await self._list_round(
            service_sid, direction, {p: (start_bound(p), k + 1) for p in range(keys.PARTITIONS)}, listed
        )
        seen: dict[int, list[int]] = {p: found[:k] for p, found in rows.items()}
        full = {p for p, found in rows.items() if len(found) > k}
        certified = _certified(seen, full, backwards)
        if len(certified) < size and full:
            refill = await self._list_round(
                service_sid,
                direction,
                {p: (f"({keys.split_cursor(seen[p][-1])[0]}", 2 * k + 1) for p in full},
                listed,
            )
            for p, found in refill.items():
                seen[p] += found[: 2 * k]
                if len(found) <= 2 * k:
                    full.discard(p)
            certified = _certified(seen, full, backwards)
        page = certified[:size]
        more = len(certified) > size or bool(full)
        ordered = sorted(page)
        return Page(
            items=await self._pick(service_sid, [listed[c] for c in ordered]),
            more=more,
            first_cursor=ordered[0] if ordered else None,
            last_cursor=ordered[-1] if ordered else None,
        )

    def _groups(self, partitions: list[int]) -> list[list[int]]:
        """Partitions one multi-partition script call may cover: one each on a cluster (one slot per
        script), all at once on standalone Redis (one round trip)."""
        if self.cluster:
            return [[p] for p in partitions]
        return [partitions] if partitions else []

    async def _list_round(
        self,
        service_sid: str,
        direction: str,
        asks: dict[int, tuple[str, int]],
        listed: dict[int, str],
    ) -> dict[int, list[int]]:
        """Runs doc_list in the partitions of ``asks`` (bound, count): each one's cursors, in walk
        order; ``listed`` learns each cursor's document SID."""
        await self._decided()
        groups = self._groups(list(asks))

        async def one(group: list[int]) -> Any:
            script_keys: list[str] = []
            args: list[str | int | bytes] = ["", service_sid, direction]
            for p in group:
                script_keys += [keys.service_copy(p, service_sid), keys.index(p, service_sid)]
                args += [keys.prefix(p), *asks[p]]
            return await self._run("doc_list", script_keys, args)

        async def all_of() -> list[Any]:
            return list(await asyncio.gather(*(one(group) for group in groups)))

        replies = await all_of()
        if any(reply[0] == b"nosvc" for reply in replies) and service_sid == self.default_service_sid:
            await self.ensure_default_service()
            replies = await all_of()
        if any(reply[0] == b"nosvc" for reply in replies):
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        found: dict[int, list[int]] = {}
        for group, reply in zip(groups, replies, strict=True):
            at = 1
            for partition in group:
                count = int(reply[at])
                found[partition] = []
                for i in range(at + 1, at + 1 + 2 * count, 2):
                    value = keys.cursor(int(reply[i + 1]), partition)
                    found[partition].append(value)
                    listed[value] = reply[i].decode()
                at += 1 + 2 * count
        return found

    async def _pick(self, service_sid: str, sids: list[str]) -> list[Document]:
        """The documents ``sids`` (a page, in its order) that still exist, read by doc_pick: one call
        per partition on a cluster, one in all on standalone Redis."""
        if not sids:
            return []
        by_partition: dict[int, list[str]] = {}
        for sid in sids:
            by_partition.setdefault(keys.sid_partition(sid), []).append(sid)
        groups = self._groups(list(by_partition))

        async def one(group: list[int]) -> tuple[list[str], Any]:
            members = [sid for p in group for sid in by_partition[p]]
            script_keys = [keys.document_key(service_sid, sid) for sid in members]
            return members, await self._run("doc_pick", script_keys, [])

        found: dict[str, Document] = {}
        for members, reply in await asyncio.gather(*(one(group) for group in groups)):
            for n, sid in enumerate(members):
                fields = reply[7 * n : 7 * n + 7]
                if fields[2] is not None:
                    found[sid] = Document.from_reply(service_sid, [sid.encode(), *fields])
        return [found[sid] for sid in sids if sid in found]

    @staticmethod
    def _document(service_sid: str, ident: str, reply: Sequence[Any]) -> Document:
        if reply[0] == b"nodoc":
            raise errors.DocumentNotFound(f"Document {ident} not found")
        return Document.from_reply(service_sid, reply[1:])

    async def sweep_expired(self, limit: int = 500) -> int:
        """One sweep of every partition (see lua/expire_sweep.lua): due documents, the sampled audit,
        and a bounded purge step (``purge_step``) of deleted services.

        On standalone Redis one script call covers all partitions, within ``limit`` removals and
        ``purge_step`` purges in all; on a cluster one call per partition (a script touches one slot),
        each within those bounds. Either way the cost does not depend on the number of services.
        Returns the number of documents removed (expired or purged); ``last_purged`` keeps the purged
        ones, and ``more_due`` says whether a bound cut the sweep short (sweep again at once).
        """

        await self._decided()

        async def one(group: list[int]) -> Any:
            script_keys: list[str] = []
            prefixes: list[str | int | bytes] = []
            for p in group:
                script_keys += [keys.expiry(p), keys.dead(p), keys.outbox(p)]
                prefixes.append(keys.prefix(p))
            start = random.randrange(len(group)) + 1
            args = ["", start, self.publish_command, limit, SWEEP_AUDIT, self.purge_step, *prefixes]
            return await self._run("expire_sweep", script_keys, args)

        groups = self._groups(list(range(keys.PARTITIONS)))
        counts = await asyncio.gather(*(one(g) for g in groups), return_exceptions=True)
        removed = purged = 0
        more = False
        failure: BaseException | None = None
        for count in counts:
            if isinstance(count, BaseException):
                # One failing partition must not stop the others; a bug is still raised. Redis
                # down or refusing: the next sweep tries again (conditions are logged).
                if not isinstance(count, errors.UnavailableError | errors.StoreFull):
                    failure = failure or count
            else:
                removed += int(count[0])
                purged += int(count[1])
                more = more or count[2] == 1
        self.last_purged = purged
        self.more_due = more
        if failure is not None:
            raise failure
        return removed + purged

    async def purging(self) -> bool:
        """Whether deleted services still have documents waiting for the purge (for tests and ops)."""
        cards = await asyncio.gather(
            *(self._command(keys.dead(p), "SCARD", keys.dead(p)) for p in range(keys.PARTITIONS))
        )
        return any(cards)

    # -- services ----------------------------------------------------------------------------------

    def resolve_service_sid(self, ident: str) -> str:
        return self.default_service_sid if ident == DEFAULT_ALIAS else ident

    async def ensure_default_service(self) -> Service:
        settings = dict(SERVICE_DEFAULTS, friendly_name="Default Service", unique_name=DEFAULT_ALIAS)
        return await self._create_service(self.default_service_sid, settings, ensure=True)

    async def create_service(self, settings: dict[str, str]) -> Service:
        return await self._create_service(new_sid(SERVICE_PREFIX), dict(SERVICE_DEFAULTS, **settings))

    async def _create_service(self, sid: str, settings: dict[str, str], ensure: bool = False) -> Service:
        """The 64 partition copies first, then the canonical hash, then the index entry: a crash
        in between leaves nothing a reader reaches half made (a service is found through its
        canonical hash and listed through the index; copies alone serve no one).

        The default service (``ensure``) may exist already, with its own settings: its canonical
        hash comes first then, and the copies follow what it holds. Until they exist, its document
        scripts answer ``nosvc`` and come back here, which is idempotent.
        """
        await self._decided()
        args: list[str | int | bytes] = ["1" if ensure else "0"]
        for name, value in settings.items():
            args += [name, value]
        if ensure:
            reply = await self._run("svc_create", [keys.service_key(sid)], args)
            service = _service(sid, reply[1:])
            await self._put_copies(service)
        else:
            await self._put_copies(_service_from_settings(sid, settings))
            reply = await self._run("svc_create", [keys.service_key(sid)], args)
            if reply[0] == b"exists":  # pragma: no cover - a random 128-bit SID collided
                raise errors.SyncError("Service SID collision, try again")
            service = _service(sid, reply[1:])
        await self._run(
            "svc_index_add", [keys.SERVICE_INDEX, keys.SERVICE_SEQ, keys.LAYOUT], [sid, keys.LAYOUT_VERSION]
        )
        return service

    async def _put_copies(self, service: Service) -> None:
        """Writes what the document scripts check within their slot into each partition's copy of the
        service: ``acl_enabled`` and the webhook (URL, and whether REST changes are sent)."""
        service_sid = service.sid
        settings = [
            "1" if service.acl_enabled else "0",
            service.webhook_url or "",
            "1" if service.webhooks_from_rest_enabled else "0",
        ]
        await asyncio.gather(
            *(
                self._run(
                    "svc_part",
                    [
                        keys.service_copy(p, service_sid),
                        keys.index(p, service_sid),
                        keys.names(p, service_sid),
                        keys.dead(p),
                    ],
                    [keys.prefix(p), service_sid, self.publish_command, "put", *settings],
                )
                for p in range(keys.PARTITIONS)
            )
        )

    async def fetch_service(self, service_sid: str) -> Service:
        flat = await self._service_map(service_sid)
        if not flat and service_sid == self.default_service_sid:
            return await self.ensure_default_service()
        if not flat:
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        return _service_from_map(service_sid, flat)

    async def update_service(self, service_sid: str, settings: dict[str, str]) -> Service:
        """The canonical hash, then, when access control or the webhook changes, each partition's copy
        (which publishes ``revoked`` for its documents when access control turns on: see
        lua/svc_part.lua)."""
        await self._decided()
        args: list[str | int | bytes] = []
        for name, value in settings.items():
            args += [name, value]
        if service_sid == self.default_service_sid:
            await self.fetch_service(service_sid)
        reply = await self._run("svc_update", [keys.service_key(service_sid)], args)
        if reply[0] == b"nosvc":
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        service = _service(service_sid, reply[1:])
        if settings.keys() & COPIED_SETTINGS:
            await self._put_copies(service)
        return service

    async def copy_webhook_settings(self) -> int:
        """Puts the webhook of every service into its partition copies, once per store: a version
        without webhooks stored ``webhook_url`` in the canonical hash only, and the write scripts read
        the copies. Marked done in ``keys.WEBHOOK_COPIES``; safe to run from several processes at
        once. Returns the number of services whose copies were written."""
        if await self._command(keys.WEBHOOK_COPIES, "EXISTS", keys.WEBHOOK_COPIES):
            return 0
        copied = 0
        for raw_sid in await self._command(keys.SERVICE_INDEX, "ZRANGE", keys.SERVICE_INDEX, 0, -1):
            sid = raw_sid.decode()
            flat = await self._command(keys.service_key(sid), "HGETALL", keys.service_key(sid))
            service = _service(sid, flat)
            if flat and service.webhook_url:
                await self._put_copies(service)
                copied += 1
        await self._command(keys.WEBHOOK_COPIES, "SET", keys.WEBHOOK_COPIES, "1")
        return copied

    async def delete_service(self, service_sid: str) -> None:
        """Gone for readers at once: the 64 copies are dropped first (every document script then
        answers ``nosvc``), handing the documents to the sweep's bounded purge, which publishes
        ``removed`` (service_deleted) for each; then the canonical hash and the index entry."""
        await self._decided()
        generation = secrets.token_hex(8)

        async def drop(p: int) -> Any:
            index, names = keys.graveyard(p, service_sid, generation)
            return await self._run(
                "svc_part",
                [
                    keys.service_copy(p, service_sid),
                    keys.index(p, service_sid),
                    keys.names(p, service_sid),
                    keys.dead(p),
                    index,
                    names,
                ],
                [keys.prefix(p), service_sid, self.publish_command, "drop", generation],
            )

        dropped = await asyncio.gather(*(drop(p) for p in range(keys.PARTITIONS)))
        canonical = keys.service_key(service_sid)
        deleted = await self._command(canonical, "DEL", canonical)
        if not deleted and not any(dropped):
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        await self._command(keys.SERVICE_INDEX, "ZREM", keys.SERVICE_INDEX, service_sid)

    async def list_services(self, *, after: int | None, before: int | None, size: int) -> Page[Service]:
        """Two round trips: the index page, then the services (sent together: one write per node).
        Entries whose service is gone (a crash between indexing and creating) are skipped."""
        index = keys.SERVICE_INDEX
        if before is not None:
            newest_first = await self._command(
                index, "ZREVRANGEBYSCORE", index, f"({before}", "-inf", "WITHSCORES", "LIMIT", 0, size + 1
            )
            rows = _scored(newest_first)[::-1]
            more = len(rows) > size
            rows = rows[-size:] if more else rows
        else:
            low = "-inf" if after is None else f"({after}"
            oldest_first = await self._command(
                index, "ZRANGEBYSCORE", index, low, "+inf", "WITHSCORES", "LIMIT", 0, size + 1
            )
            rows = _scored(oldest_first)
            more = len(rows) > size
            rows = rows[:size]
        maps = await asyncio.gather(*(self._service_map(sid) for sid, _ in rows))
        items: list[Service] = []
        cursors: list[int] = []
        for (sid, score), flat in zip(rows, maps, strict=True):
            if flat:
                items.append(_service_from_map(sid, flat))
                cursors.append(score)
        return _page(items, cursors, more=more)

    async def _service_map(self, service_sid: str) -> dict[bytes, bytes]:
        """The service's canonical hash (empty when there is none)."""
        canonical = keys.service_key(service_sid)
        flat = await self._command(canonical, "HGETALL", canonical)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

    # -- permissions -------------------------------------------------------------------------------

    async def _perm(self, service_sid: str, document: str, op: str, identity: str, flags: str) -> Any:
        reply = await self._run_on(service_sid, ["", "", ""], "perm", document, [op, identity, flags])
        if reply[0] == b"nodoc":
            raise errors.DocumentNotFound(f"Document {document} not found")
        if reply[0] == b"noperm":
            raise errors.PermissionNotFound(f"Permission for identity {identity} not found")
        return reply

    async def fetch_permission(self, service_sid: str, document: str, identity: str) -> Permission:
        reply = await self._perm(service_sid, document, "get", identity, "")
        return _permission(service_sid, reply[1].decode(), identity, reply[3])

    async def set_permission(
        self, service_sid: str, document: str, identity: str, read: bool, write: bool, manage: bool
    ) -> Permission:
        flags = "".join("1" if flag else "0" for flag in (read, write, manage))
        reply = await self._perm(service_sid, document, "set", identity, flags)
        return _permission(service_sid, reply[1].decode(), identity, flags.encode())

    async def delete_permission(self, service_sid: str, document: str, identity: str) -> None:
        await self._perm(service_sid, document, "del", identity, "")

    async def list_permissions(self, service_sid: str, document: str) -> tuple[str, list[Permission]]:
        """The document's SID and all its permissions, sorted by identity."""
        reply = await self._perm(service_sid, document, "list", "", "")
        document_sid = reply[1].decode()
        pairs = reply[2:]
        found = [
            _permission(service_sid, document_sid, pairs[i].decode(), pairs[i + 1])
            for i in range(0, len(pairs), 2)
        ]
        return document_sid, sorted(found, key=lambda p: p.identity)

    async def _command(self, key: str, *args: str | int | bytes) -> Any:
        """One plain command whose first key is ``key``, with the same error mapping as :meth:`_run`.

        The management commands (services, the purge state, the layout check) go through the
        scripts' connection like the scripts, not through the redis-py client the store was built
        with: on a cluster that client speaks to one node and gets ``MOVED`` for every key elsewhere,
        while the router already knows the slot map, follows redirections and waits out a failover.
        redis-py's ``RedisCluster`` would be a second client (its own map, connections and lazy
        initialisation, which races with concurrent first calls) for a handful of cold commands. On a
        single Redis this is the same multiplexed connection, so both kinds of Redis take one path,
        and concurrent commands leave in one write per node (what a pipeline gave before).
        """
        return await self._guard(lambda: self._scripts.command(key, *args))

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs a Redis call, with the same error mapping as :meth:`_run`."""
        try:
            return await call()
        except RedisError as exc:
            condition = condition_of(exc)
            if condition is not None:
                raise self.conditions.seen(condition) from None
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                raise unreachable(exc) from exc
            raise
        except OSError as exc:
            raise unreachable(exc) from exc


def _principal(who: Principal) -> list[str | int | bytes]:
    return [who.acl_identity, who.identity, who.endpoint_id or ""]


def _forbidden(who: Principal) -> errors.ForbiddenError:
    return errors.ForbiddenError(f"The identity {who.identity!r} has no permission for this on the document")


def _certified(seen: dict[int, list[int]], full: set[int], backwards: bool) -> list[int]:
    """The merged items (cursors, in walk order) that no partition can still precede: those up to
    the nearest last item among the partitions that have more (``full``); all when none has."""
    merged = sorted((v for values in seen.values() for v in values), reverse=backwards)
    if not full:
        return merged
    ends = [seen[p][-1] for p in full]
    limit = max(ends) if backwards else min(ends)
    return [v for v in merged if (v >= limit if backwards else v <= limit)]


def _scored(flat: list[bytes]) -> list[tuple[str, int]]:
    """The (member, score) pairs of a ``WITHSCORES`` reply (the scores here are integers)."""
    return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


def _by_sid(ident: str) -> str:
    return "1" if is_sid(ident, DOCUMENT_PREFIX) else "0"


def _page(items: list[T], cursors: list[int], *, more: bool) -> Page[T]:
    return Page(
        items=items,
        more=more,
        first_cursor=cursors[0] if cursors else None,
        last_cursor=cursors[-1] if cursors else None,
    )


def _permission(service_sid: str, document_sid: str, identity: str, flags: bytes) -> Permission:
    return Permission(
        service_sid=service_sid,
        document_sid=document_sid,
        identity=identity,
        read=flags[0:1] == b"1",
        write=flags[1:2] == b"1",
        manage=flags[2:3] == b"1",
    )


def _service(sid: str, flat: Sequence[bytes]) -> Service:
    return _service_from_map(sid, {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)})


def _service_from_settings(sid: str, settings: dict[str, str]) -> Service:
    return _service_from_map(sid, {name.encode(): value.encode() for name, value in settings.items()})


def service_from_hash(sid: str, raw: dict[bytes, bytes]) -> Service:
    """A service from its canonical hash (``HGETALL sync:{S}:svc``)."""
    return _service_from_map(sid, raw)


def _service_from_map(sid: str, raw: dict[bytes, bytes]) -> Service:
    def text(name: str) -> str | None:
        value = raw.get(name.encode(), b"")
        return value.decode() or None

    def flag(name: str) -> bool:
        return raw.get(name.encode()) == b"1"

    return Service(
        sid=sid,
        unique_name=text("unique_name"),
        friendly_name=text("friendly_name"),
        webhook_url=text("webhook_url"),
        webhooks_from_rest_enabled=flag("webhooks_from_rest_enabled"),
        reachability_webhooks_enabled=flag("reachability_webhooks_enabled"),
        reachability_debouncing_enabled=flag("reachability_debouncing_enabled"),
        reachability_debouncing_window=int(raw.get(b"reachability_debouncing_window", b"5000")),
        acl_enabled=flag("acl_enabled"),
        date_created=int(raw.get(b"c", b"0")),
        date_updated=int(raw.get(b"u", b"0")),
    )
