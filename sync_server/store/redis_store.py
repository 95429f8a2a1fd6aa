"""The Redis implementation of the store contracts in ``base.py``.

Every document operation is one EVALSHA of a script in ``lua/``; the scripts reply with a status
word first (``ok``, ``nosvc``, ``nodoc``, ``dup``, ``rev``, ``big``, ``noperm``) so that expected
failures cost no Redis error round trip and are mapped to the error hierarchy here, in one place.
Redis's own refusals (out of memory, loading, read-only…) are mapped in ``conditions.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sync_server import errors
from sync_server.ids import DOCUMENT_PREFIX, SERVICE_PREFIX, is_sid, new_sid
from sync_server.principal import Principal
from sync_server.store import keys
from sync_server.store.base import WriteMode
from sync_server.store.conditions import CONDITIONS, ConditionLog, condition_of, unreachable
from sync_server.store.models import Document, Page, Permission, Service
from sync_server.store.multiplex import DEFAULT_TIMEOUT
from sync_server.store.scripts import ScriptRunner
from sync_server.validation import MAX_DATA_BYTES, check_data_size

T = TypeVar("T")

DEFAULT_ALIAS = "default"
SWEEP_CONCURRENCY = 8
"""Services swept at once (see :meth:`RedisStore.sweep_expired`)."""
SWEEP_AUDIT = 10
"""Expiry-index entries per service that each sweep samples for a vanished document hash: small,
because every process sweeps every service several times a second, and the case is rare (an
operator's EXPIRE, or volatile-* eviction)."""
STORING_SCRIPTS = frozenset({"doc_create", "doc_write"})
"""Scripts whose ``ok`` reply means Redis accepted a write that needs memory (see conditions.py)."""
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


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` reports: ``ok``, ``degraded`` (Redis answers but refuses some work) or
    ``unavailable`` (Redis cannot be reached)."""

    status: Literal["ok", "degraded", "unavailable"]
    detail: str | None = None


def default_service_sid(account_sid: str) -> str:
    """The default service's SID, derived from the account so it is the same in every process and
    across restarts without any coordination."""
    digest = hashlib.sha256(f"default-service:{account_sid}".encode()).hexdigest()
    return SERVICE_PREFIX + digest[:32]


class RedisStore:
    """Documents, services and permissions on one Redis (see ``keys.py`` for the layout)."""

    def __init__(self, redis: Redis, account_sid: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """``timeout``: seconds a script may take to answer (see scripts.py)."""
        self.redis = redis
        self.account_sid = account_sid
        self.default_service_sid = default_service_sid(account_sid)
        self._scripts = ScriptRunner(redis, timeout=timeout)
        self.conditions = ConditionLog()

    async def close(self) -> None:
        # Both connections: the scripts run on their own multiplexed one (store/scripts.py).
        await self._scripts.aclose()
        await self.redis.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers at all (it may still refuse writes: see :meth:`health`)."""
        return (await self.health()).status != "unavailable"

    async def health(self) -> Health:
        """One ``INFO memory`` round trip, plus what recent replies said.

        Out of memory is judged from INFO (used memory over ``maxmemory``, with a policy that does
        not evict, or one that could not evict enough: an OOM reply seen lately), so ``/healthz``
        turns ok as soon as memory is freed or ``maxmemory`` raised. The other conditions cannot be
        read as cheaply and are reported while a reply showing them is recent (``HEALTH_WINDOW``).
        """
        try:
            memory = await self._memory_info()
        except RedisError as exc:
            condition = condition_of(exc)
            if condition is not None:
                return Health("degraded", condition.detail)
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                return Health("unavailable", "Redis is unreachable")
            raise
        except OSError:
            return Health("unavailable", "Redis is unreachable")
        self.conditions.answered()
        recent = self.conditions.recent()
        oom_seen = CONDITIONS["OOM"] in recent
        if _out_of_memory(memory, oom_seen=oom_seen) if memory is not None else oom_seen:
            return Health("degraded", CONDITIONS["OOM"].detail)
        self.conditions.clear("OOM")
        others = [condition for condition in recent if condition.word != "OOM"]
        if others:
            return Health("degraded", others[0].detail)
        return Health("ok")

    async def _memory_info(self) -> dict[str, Any] | None:
        """``INFO memory``, or None (after a PING) where INFO is not allowed: it is in the ACL
        category ``@dangerous``, which restricted users of hosted Redis often lack."""
        try:
            info: dict[str, Any] = await self.redis.info("memory")
        except ResponseError as exc:
            if condition_of(exc) is not None:
                raise
            await self.redis.ping()
            return None
        return info

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

    async def _run_in_service(self, service_sid: str, name: str, args: list[str | int | bytes]) -> Any:
        """Runs a script of one service, creating the default service on its first use.

        The hot path pays nothing for the alias: only a ``nosvc`` reply for the default service's SID
        (first use ever, or after someone deleted it) costs the extra creation round trip.
        """
        script_keys = [keys.service_key(service_sid)]
        script_args: list[str | int | bytes] = [keys.service_prefix(service_sid), *args]
        reply = await self._run(name, script_keys, script_args)
        if reply[0] == b"nosvc" and service_sid == self.default_service_sid:
            await self.ensure_default_service()
            reply = await self._run(name, script_keys, script_args)
        if reply[0] == b"nosvc":
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        return reply

    async def _run_as(self, who: Principal, name: str, args: list[str | int | bytes]) -> Any:
        """Runs a document script as ``who`` (the principal arguments every document script takes
        first, see lua/_prelude.lua); a refusal by access control raises ``ForbiddenError``."""
        principal: list[str | int | bytes] = [who.acl_identity, who.identity, who.endpoint_id or ""]
        reply = await self._run_in_service(who.service_sid, name, principal + args)
        if reply[0] == b"forbidden":
            raise errors.ForbiddenError(
                f"The identity {who.identity!r} has no permission for this on the document"
            )
        return reply

    # -- documents ---------------------------------------------------------------------------------

    async def create_document(
        self, who: Principal, unique_name: str | None, data: bytes, ttl: int
    ) -> Document:
        sid = new_sid(DOCUMENT_PREFIX)
        reply = await self._run_as(who, "doc_create", [sid, unique_name or "", data, ttl])
        if reply[0] == b"dup":
            raise errors.UniqueNameConflict(f"Unique name already exists: {unique_name}")
        return Document.from_reply(who.service_sid, reply[1:])

    async def fetch_document(self, who: Principal, ident: str) -> Document:
        reply = await self._run_as(who, "doc_fetch", [ident, _by_sid(ident)])
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
            ident,
            _by_sid(ident),
            b"" if data is None else data,
            mode,
            "" if ttl is None else ttl,
            if_match or "",
            MAX_DATA_BYTES,
        ]
        reply = await self._run_as(who, "doc_write", args)
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
        reply = await self._run_as(who, "doc_delete", [ident, _by_sid(ident)])
        return self._document(who.service_sid, ident, reply)

    async def list_documents(
        self, service_sid: str, *, after: int | None, before: int | None, size: int
    ) -> Page[Document]:
        direction, cursor = ("before", before) if before is not None else ("after", after)
        reply = await self._run_in_service(
            service_sid, "doc_list", [direction, "" if cursor is None else cursor, size]
        )
        rows = reply[2:]
        items: list[Document] = []
        cursors: list[int] = []
        for i in range(0, len(rows), 9):
            items.append(Document.from_reply(service_sid, rows[i : i + 8]))
            cursors.append(int(rows[i + 8]))
        if direction == "before":
            items.reverse()
            cursors.reverse()
        return _page(items, cursors, more=reply[1] == 1)

    @staticmethod
    def _document(service_sid: str, ident: str, reply: Sequence[Any]) -> Document:
        if reply[0] == b"nodoc":
            raise errors.DocumentNotFound(f"Document {ident} not found")
        return Document.from_reply(service_sid, reply[1:])

    async def sweep_expired(self, limit: int = 500) -> int:
        """One sweep of every service (see lua/expire_sweep.lua), ``SWEEP_CONCURRENCY`` at a time.

        The bound matters: the sweep shares its Redis connections with request handling. On
        redis-py's pool, whose asyncio flavour raises ``MaxConnectionsError`` rather than waiting,
        an unbounded gather over more services than the pool holds made concurrent requests fail
        with 503; on a multiplexed connection it would queue every service's script ahead of them.
        """
        try:
            services = cast(
                "list[bytes]", await self._guard(lambda: self.redis.zrange(keys.SERVICE_INDEX, 0, -1))
            )
        except errors.UnavailableError:
            return 0  # Redis down or refusing: the next sweep tries again (conditions are logged)
        removed = 0
        failure: BaseException | None = None
        for start in range(0, len(services), SWEEP_CONCURRENCY):
            batch = services[start : start + SWEEP_CONCURRENCY]
            counts = await asyncio.gather(
                *(self._sweep_service(sid.decode(), limit) for sid in batch), return_exceptions=True
            )
            for count in counts:
                if isinstance(count, BaseException):
                    # One failing service must not stop the others; the first bug is still raised.
                    if not isinstance(count, errors.UnavailableError):
                        failure = failure or count
                else:
                    removed += count
        if failure is not None:
            raise failure
        return removed

    async def _sweep_service(self, service_sid: str, limit: int) -> int:
        count: int = await self._run(
            "expire_sweep",
            [keys.service_key(service_sid)],
            [keys.service_prefix(service_sid), limit, SWEEP_AUDIT],
        )
        return count

    # -- services ----------------------------------------------------------------------------------

    def resolve_service_sid(self, ident: str) -> str:
        return self.default_service_sid if ident == DEFAULT_ALIAS else ident

    async def ensure_default_service(self) -> Service:
        settings = dict(SERVICE_DEFAULTS, friendly_name="Default Service", unique_name=DEFAULT_ALIAS)
        return await self._create_service(self.default_service_sid, settings, ensure=True)

    async def create_service(self, settings: dict[str, str]) -> Service:
        return await self._create_service(new_sid(SERVICE_PREFIX), dict(SERVICE_DEFAULTS, **settings))

    async def _create_service(self, sid: str, settings: dict[str, str], ensure: bool = False) -> Service:
        # Indexed first: a crash in between leaves an index entry without a service, which listing
        # skips, rather than a service that listing can never reach.
        await self._run("svc_index_add", [keys.SERVICE_INDEX, keys.SERVICE_SEQ], [sid])
        args: list[str | int | bytes] = ["1" if ensure else "0"]
        for name, value in settings.items():
            args += [name, value]
        reply = await self._run("svc_create", [keys.service_key(sid)], args)
        if reply[0] == b"exists":  # pragma: no cover - a random 128-bit SID collided
            raise errors.SyncError("Service SID collision, try again")
        return _service(sid, reply[1:])

    async def fetch_service(self, service_sid: str) -> Service:
        flat = cast(
            "dict[bytes, bytes]",
            await self._guard(lambda: self.redis.hgetall(keys.service_key(service_sid))),
        )
        if not flat and service_sid == self.default_service_sid:
            return await self.ensure_default_service()
        if not flat:
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        return _service_from_map(service_sid, flat)

    async def update_service(self, service_sid: str, settings: dict[str, str]) -> Service:
        args: list[str | int | bytes] = []
        for name, value in settings.items():
            args += [name, value]
        if service_sid == self.default_service_sid:
            await self.fetch_service(service_sid)
        reply = await self._run(
            "svc_update", [keys.service_key(service_sid)], [keys.service_prefix(service_sid), *args]
        )
        if reply[0] == b"nosvc":
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        return _service(service_sid, reply[1:])

    async def delete_service(self, service_sid: str) -> None:
        reply = await self._run(
            "svc_delete", [keys.service_key(service_sid)], [keys.service_prefix(service_sid)]
        )
        if reply[0] == b"nosvc":
            raise errors.ServiceNotFound(f"Service {service_sid} not found")
        await self._guard(lambda: self.redis.zrem(keys.SERVICE_INDEX, service_sid))

    async def list_services(self, *, after: int | None, before: int | None, size: int) -> Page[Service]:
        """Two round trips: the index page, then the services (pipelined). Entries whose service is
        gone (a crash between indexing and creating) are skipped."""
        rows: list[tuple[bytes, float]]
        if before is not None:
            newest_first = await self._guard(
                lambda: self.redis.zrevrangebyscore(
                    keys.SERVICE_INDEX, f"({before}", "-inf", start=0, num=size + 1, withscores=True
                )
            )
            rows = list(reversed(cast("list[tuple[bytes, float]]", newest_first)))
            more = len(rows) > size
            rows = rows[-size:] if more else rows
        else:
            low = "-inf" if after is None else f"({after}"
            oldest_first = await self._guard(
                lambda: self.redis.zrangebyscore(
                    keys.SERVICE_INDEX, low, "+inf", start=0, num=size + 1, withscores=True
                )
            )
            rows = cast("list[tuple[bytes, float]]", oldest_first)
            more = len(rows) > size
            rows = rows[:size]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, _ in rows:
                pipe.hgetall(keys.service_key(sid.decode()))
            maps = cast("list[dict[bytes, bytes]]", await self._guard(pipe.execute))
        items: list[Service] = []
        cursors: list[int] = []
        for (sid, score), flat in zip(rows, maps, strict=True):
            if flat:
                items.append(_service_from_map(sid.decode(), flat))
                cursors.append(int(score))
        return _page(items, cursors, more=more)

    # -- permissions -------------------------------------------------------------------------------

    async def _perm(self, service_sid: str, document: str, op: str, identity: str, flags: str) -> Any:
        reply = await self._run_in_service(
            service_sid, "perm", [document, _by_sid(document), op, identity, flags]
        )
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

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs a redis-py call, with the same error mapping as :meth:`_run`."""
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


def _out_of_memory(memory: dict[str, Any], *, oom_seen: bool) -> bool:
    limit = int(memory.get("maxmemory", 0) or 0)
    if limit <= 0 or int(memory.get("used_memory", 0) or 0) < limit:
        return False
    # Under an evicting policy Redis makes room itself, unless there is nothing it may evict.
    return memory.get("maxmemory_policy") == "noeviction" or oom_seen


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
