"""The ``/v1`` ASGI app: authentication, routing on raw path segments, and error mapping.

Routing splits the *raw* path and unquotes each segment afterwards, so that a unique name with an
encoded ``/`` (``my%2Fdoc``) stays one segment; the usual decoded-path routing would split it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sync_server import errors
from sync_server.rest import handlers
from sync_server.rest.auth import BasicAuth
from sync_server.rest.handlers import Context
from sync_server.rest.requests import base_url
from sync_server.rest.responses import error_response
from sync_server.store.redis_store import RedisStore

log = logging.getLogger(__name__)

Handler = Callable[[Context], Awaitable[Response]]

# Segment patterns: literal names, or None for a path parameter.
ROUTES: dict[tuple[str | None, ...], dict[str, Handler]] = {
    ("Services",): {"GET": handlers.list_services, "POST": handlers.create_service},
    ("Services", None): {
        "GET": handlers.fetch_service,
        "POST": handlers.update_service,
        "DELETE": handlers.delete_service,
    },
    ("Services", None, "Documents"): {"GET": handlers.list_documents, "POST": handlers.create_document},
    ("Services", None, "Documents", None): {
        "GET": handlers.fetch_document,
        "POST": handlers.update_document,
        "DELETE": handlers.delete_document,
    },
    ("Services", None, "Documents", None, "Permissions"): {"GET": handlers.list_permissions},
    ("Services", None, "Documents", None, "Permissions", None): {
        "GET": handlers.fetch_permission,
        "POST": handlers.update_permission,
        "DELETE": handlers.delete_permission,
    },
}
_SHAPES = {len(pattern): pattern for pattern in ROUTES}


@dataclass(frozen=True, slots=True)
class RestConfig:
    account_sid: str
    public_url: str | None
    max_body_bytes: int


class RestApi:
    """Mounted at ``/v1``: every request is authenticated before anything else is looked at."""

    def __init__(self, store: RedisStore, auth: BasicAuth, config: RestConfig) -> None:
        self.store = store
        self.auth = auth
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._handle(request)
        except errors.SyncError as exc:
            response = error_response(exc)
        except Exception:
            # A bug, not bad input: log it, and still answer in Twilio's format without a traceback.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = error_response(errors.SyncError("Internal server error"))
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        scope = request.scope
        self.auth.check(_header(scope, b"authorization"))
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        segments = raw_path.decode("latin-1").split("/")
        # raw_path is the full path: drop everything up to and including the "v1" segment.
        try:
            segments = segments[segments.index("v1") + 1 :]
        except ValueError:
            segments = []
        if segments and segments[-1] == "":
            segments.pop()
        handler, params = _route(segments, scope["method"])
        context = Context(
            request=request,
            store=self.store,
            params=params,
            query=dict(parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)),
            base=base_url(request, self.config.public_url),
            account_sid=self.config.account_sid,
            max_body_bytes=self.config.max_body_bytes,
        )
        return await handler(context)


def _route(segments: list[str], method: str) -> tuple[Handler, list[str]]:
    pattern = _SHAPES.get(len(segments))
    if pattern is None or any(p is not None and p != s for p, s in zip(pattern, segments, strict=True)):
        raise errors.NotFoundError(f"The requested resource /v1/{'/'.join(segments)} was not found")
    try:
        params = [unquote(s, errors="strict") for p, s in zip(pattern, segments, strict=True) if p is None]
    except UnicodeDecodeError:
        raise errors.NotFoundError("The requested resource was not found: the path is not UTF-8") from None
    methods = ROUTES[pattern]
    if method not in methods:
        raise errors.SyncError("Method not allowed", code=20004, status=405)
    return methods[method], params


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
