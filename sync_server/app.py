"""The composition root: builds the concrete store, the document service, the REST API and the
websocket gateways.

``create_app()`` is what uvicorn imports in every worker process (``factory=True``); settings come
from ``SYNC_*`` environment variables (see config.py and cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from sync_server import errors, logs, metrics, redaction
from sync_server.config import Settings
from sync_server.documents import DocumentService
from sync_server.gateway import WEBSOCKET_PROTOCOL
from sync_server.gateway.auth import SocketAuthenticator
from sync_server.gateway.endpoint import SocketEndpoint
from sync_server.gateway.native import NativeEndpoint
from sync_server.gateway.subscriptions import fan_out
from sync_server.gateway.twilsock import TwilsockEndpoint
from sync_server.hosts import HostPolicy, refusal, refuse
from sync_server.hub import Hub
from sync_server.rest import openapi
from sync_server.rest.api import RestApi, RestConfig
from sync_server.rest.auth import BasicAuth
from sync_server.rest.responses import error_response, json_response
from sync_server.store.conditions import WarningThrottle
from sync_server.store.migrate import check_layout
from sync_server.store.redis_store import RedisStore
from sync_server.store.webhook_outbox import RedisOutbox
from sync_server.tokens import TokenVerifier
from sync_server.webhooks.deliverer import Deliverer
from sync_server.webhooks.retry import RetryPolicy
from sync_server.webhooks.sender import Sender

log = logging.getLogger(__name__)

REDIS_POOL_SIZE = 64


class SyncApp:
    """The ASGI app: REST requests go straight to the REST API; everything else (lifespan, health,
    static files) through Starlette's router. Websocket connections never reach it as ASGI: the
    server's websocket protocol (gateway/uvicorn_ws.py) asks :meth:`websocket_endpoint` for the
    endpoint of each handshake and runs the session itself.

    The REST API maps every error to Twilio's format itself, and adds its request id and access line
    (logs.py), so Starlette's middleware stack (about a tenth of a REST write's CPU) would add nothing
    on that path. Every request's Host is checked first (hosts.py): links in responses are built
    from it. Other HTTP requests get their request id and access line here (:meth:`_http`).
    """

    def __init__(
        self, starlette: Starlette, rest: RestApi, sockets: dict[str, SocketEndpoint], hosts: HostPolicy
    ) -> None:
        self.starlette = starlette
        self.rest = rest
        self.sockets = sockets
        self.hosts = hosts
        self.state = starlette.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith("/v1/") and self.hosts.allows_scope(scope):
                await self.rest(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        elif kind == "websocket":
            await _no_asgi_websockets(scope, receive, send)
        elif kind != "lifespan" and not self.hosts.allows_scope(scope):
            await refuse(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    def websocket_endpoint(self, scope: Scope) -> SocketEndpoint:
        """The endpoint of a websocket handshake (its Host checked first, as for HTTP); raises the
        ``SyncError`` to answer the handshake with instead."""
        if not self.hosts.allows_scope(scope):
            raise refusal()
        endpoint = self.sockets.get(scope["path"])
        if endpoint is None:
            raise errors.NotFoundError(f"The requested resource {scope['path']} was not found")
        return endpoint

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An HTTP request outside ``/v1`` (or refused for its Host), with its request id added to
        the response and its access line logged."""
        started = time.perf_counter()
        request_id = logs.new_request_id()
        logs.current_request_id.set(request_id)
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (logs.REQUEST_ID_HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self.hosts.allows_scope(scope):
                await self.starlette(scope, receive, send_with_id)
            else:
                await refuse(scope, receive, send_with_id)
        finally:
            # Also after a bug, which Starlette has answered with a 500 before re-raising it.
            route = _route_template(scope)
            logs.log_access(scope, request_id, route, status, started)
            metrics.count_request(scope["method"], route, status, started)


async def _no_asgi_websockets(scope: Scope, receive: Receive, send: Send) -> None:
    """A websocket handshake that came as ASGI: the server runs without the gateway's protocol."""
    log.error(
        "websocket handshake for %s refused: the server must use %s (sync-server does)",
        scope.get("path"),
        WEBSOCKET_PROTOCOL,
    )
    await send({"type": "websocket.close", "code": 1011})


def _route_template(scope: Scope) -> str | None:
    """The template of the Starlette route that served ``scope`` (the router records it there)."""
    route = scope.get("route")
    if isinstance(route, Mount):
        return f"{route.path}/{{path}}"
    if isinstance(route, Route):
        return route.path
    return None


def create_app(settings: Settings | None = None) -> SyncApp:
    settings = settings or Settings.from_env()
    redaction.install()
    redis = Redis.from_url(
        settings.redis_url,
        max_connections=REDIS_POOL_SIZE,
        socket_connect_timeout=2,
        # The management commands (service reads, /healthz's INFO) time out like the scripts do; the
        # hub reads only the connection settings from this client and keeps its own heartbeat.
        socket_timeout=settings.redis_timeout or None,
    )
    store = RedisStore(redis, settings.account_sid, timeout=settings.redis_timeout)
    documents = DocumentService(store)
    auth = BasicAuth(
        [(settings.account_sid, settings.auth_token), (settings.api_key_sid, settings.api_key_secret)]
    )
    rest = RestApi(
        documents,
        auth,
        RestConfig(settings.account_sid, settings.public_url, settings.limits.max_body_bytes),
    )

    hub = Hub(redis, fan_out=fan_out)
    api_keys = {settings.api_key_sid: settings.api_key_secret} if settings.api_key_secret else {}
    authenticator = SocketAuthenticator(documents, TokenVerifier(settings.account_sid, api_keys), auth)
    native = NativeEndpoint(documents, hub, authenticator, settings.limits)
    twilsock = TwilsockEndpoint(documents, hub, authenticator, settings.limits)
    deliverer = _deliverer(settings, store)

    async def healthz(request: Request) -> Response:
        # 503 when degraded too: writes fail, so a load balancer should prefer another instance.
        health = await store.health()
        if health.status == "ok":
            return json_response({"status": "ok"})
        return json_response({"status": health.status, "detail": health.detail}, 503)

    metrics_need_credentials = settings.metrics_need_credentials

    async def metrics_endpoint(request: Request) -> Response:
        if metrics_need_credentials:
            try:
                auth.check(request.headers.get("authorization", "").encode("latin-1") or None)
            except errors.AuthenticationError as exc:
                return error_response(exc)
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Refuses to serve a store of the previous key layout (`sync-server migrate` re-keys it).
        await store.detect_cluster()
        await check_layout(store)
        if store.publish_command == "SPUBLISH" and store.topology is not None:
            # Events leave by SPUBLISH on the master of their slot: the hub subscribes there too.
            hub.shard_by(store.topology)
        await hub.start()
        # The default service exists before the first client writes (it is also made on first use,
        # should Redis be down now): a write made while it is created on first use is repeated, and
        # pipelined writes sent behind it would overtake it (gateway/session.py, pipelining).
        with contextlib.suppress(errors.SyncError):
            await store.ensure_default_service()
        sweeper = asyncio.create_task(_sweep_forever(store, settings.expiry_interval))
        if deliverer is not None:
            with contextlib.suppress(errors.SyncError):  # Redis down: the next start copies them
                await store.copy_webhook_settings()
            deliverer.start()
        try:
            yield
        finally:
            sweeper.cancel()
            if deliverer is not None:
                # Deliveries in flight finish (or go back to the outbox for another process); half
                # the drain timeout, the requests' drain having had the whole of it already.
                await deliverer.stop(settings.limits.drain_timeout / 2)
                await deliverer.outbox.aclose()
            await hub.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await store.close()
            metrics.process_exit()

    static_dir = Path(__file__).parent / "static"

    async def demo(request: Request) -> Response:
        return FileResponse(static_dir / "demo.html", media_type="text/html")

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            # Routes name their methods in Allow; StaticFiles (the only other source) serves GET and HEAD.
            allowed = (exc.headers or {}).get("Allow", "GET, HEAD")
            return error_response(errors.MethodNotAllowed(allowed.split(", ")))
        return error_response(
            errors.NotFoundError(f"The requested resource {request.url.path} was not found")
        )

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/openapi.json", openapi.endpoint(settings.limits.max_body_bytes, metrics=metrics.ENABLED)),
            *([Route("/metrics", metrics_endpoint)] if metrics.ENABLED else []),
            # The browser client and the demo page: public files, no data in them.
            Mount("/sdk", app=StaticFiles(directory=static_dir)),
            Route("/demo", demo),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.store = store
    # The native protocol, and the official Twilio Sync JS SDK's (Twilsock V3.0).
    sockets: dict[str, SocketEndpoint] = {"/ws": native, "/v3/wsconnect": twilsock}
    return SyncApp(app, rest, sockets, HostPolicy(settings.allowed_hosts))


def _deliverer(settings: Settings, store: RedisStore) -> Deliverer | None:
    """The webhook deliverer of this process, or None when ``SYNC_WEBHOOKS`` is off."""
    config = settings.webhooks
    if not config.enabled:
        return None
    sender = Sender(
        settings.account_sid, settings.auth_token, timeout=config.timeout, concurrency=config.concurrency
    )
    return Deliverer(
        RedisOutbox(store, timeout=settings.redis_timeout),
        sender,
        RetryPolicy(config.first_wait, config.max_wait, config.retry_for),
        lease=config.lease,
    )


async def _sweep_forever(store: RedisStore, interval: float) -> None:
    """Removes expired documents and publishes their ``removed`` events, every ``interval`` seconds.

    Redis evicts expired keys lazily and keyspace notifications fire only on eviction, so timing
    must not depend on them: this loop bounds the delay of a ``removed`` event by ``interval``.
    """
    task = asyncio.current_task()
    # A failure tends to repeat on every sweep, five times a second: log it once per interval.
    throttle = WarningThrottle()
    while True:
        started = time.perf_counter()
        try:
            metrics.DOCUMENTS_EXPIRED.inc(await store.sweep_expired())
            metrics.SWEEP_DURATION.observe(time.perf_counter() - started)
        except errors.SyncError as exc:
            throttle.warn("store", "expiry sweep failed: %s", exc.message, exc_info=False)
        except Exception:
            throttle.warn("bug", "expiry sweep failed", exc_info=True)
        # redis-py can swallow a cancellation that lands inside a command; without this check a
        # shutdown would wait on this loop until the process is killed.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        # A sweep cut short by its bounds (many documents due at once) goes on at once, in bounded
        # script calls, rather than leaving the rest an interval late.
        await asyncio.sleep(0 if store.more_due else interval)
