"""The ``/v1`` ASGI app: authentication, routing on raw path segments, and error mapping.

Routing splits the *raw* path and unquotes each segment afterwards, so that a unique name with an
encoded ``/`` (``my%2Fdoc``) stays one segment; the usual decoded-path routing would split it.

twilio-python 9.x does not encode the document's ``{Sid}`` at all (``"/Documents/{sid}".format``),
so a unique name with a ``/`` also arrives as several raw segments. Everything between ``Documents``
and an optional trailing ``Permissions[/{Identity}]`` is therefore the document. The one ambiguity,
a unique name that itself ends in ``/Permissions`` (or ``/Permissions/x``) sent unencoded, resolves
to the permissions route; sent encoded (``%2F``) it is unambiguous.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sync_server import errors, metrics
from sync_server.documents import DocumentService
from sync_server.logs import REQUEST_ID_HEADER, current_request_id, log_access, new_request_id
from sync_server.principal import SYSTEM_IDENTITY
from sync_server.rest import handlers
from sync_server.rest.auth import BasicAuth
from sync_server.rest.handlers import Context
from sync_server.rest.requests import base_url
from sync_server.rest.responses import error_response

log = logging.getLogger(__name__)

Handler = Callable[[Context], Awaitable[Response]]
Pattern = tuple[str | None, ...]

_DOCUMENT = ("Services", None, "Documents", None)
_PERMISSIONS = (*_DOCUMENT, "Permissions")
_PERMISSION = (*_PERMISSIONS, None)

# Segment patterns: literal names, or None for a path parameter.
ROUTES: dict[Pattern, dict[str, Handler]] = {
    ("Services",): {"GET": handlers.list_services, "POST": handlers.create_service},
    ("Services", None): {
        "GET": handlers.fetch_service,
        "POST": handlers.update_service,
        "DELETE": handlers.delete_service,
    },
    ("Services", None, "Documents"): {"GET": handlers.list_documents, "POST": handlers.create_document},
    _DOCUMENT: {
        "GET": handlers.fetch_document,
        "POST": handlers.update_document,
        "DELETE": handlers.delete_document,
    },
    _PERMISSIONS: {"GET": handlers.list_permissions},
    _PERMISSION: {
        "GET": handlers.fetch_permission,
        "POST": handlers.update_permission,
        "DELETE": handlers.delete_permission,
    },
}
_SHAPES = {len(pattern): pattern for pattern in ROUTES}

# The route templates of logs and metrics: the OpenAPI description's paths (a test pins them).
TEMPLATES: dict[Pattern, str] = {
    ("Services",): "/v1/Services",
    ("Services", None): "/v1/Services/{Sid}",
    ("Services", None, "Documents"): "/v1/Services/{ServiceSid}/Documents",
    _DOCUMENT: "/v1/Services/{ServiceSid}/Documents/{Sid}",
    _PERMISSIONS: "/v1/Services/{ServiceSid}/Documents/{DocumentSid}/Permissions",
    _PERMISSION: "/v1/Services/{ServiceSid}/Documents/{DocumentSid}/Permissions/{Identity}",
}


@dataclass(frozen=True, slots=True)
class RestConfig:
    account_sid: str
    public_url: str | None
    max_body_bytes: int


class RestApi:
    """Mounted at ``/v1``: every request is authenticated before anything else is looked at."""

    def __init__(self, documents: DocumentService, auth: BasicAuth, config: RestConfig) -> None:
        self.documents = documents
        self.auth = auth
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        # For records logged while this request is handled (this task's context only).
        current_request_id.set(request_id)
        request = Request(scope, receive)
        route: str | None = None
        identity: str | None = None
        try:
            # Authenticated before the path is looked at: a stranger learns nothing about routes.
            self.auth.check(_header(scope, b"authorization"))
            identity = SYSTEM_IDENTITY
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
            pattern, params = _match(_segments(raw_path))
            route = TEMPLATES[pattern]
            response = await self._handle(request, pattern, params)
        except errors.SyncError as exc:
            if identity is None:
                # Refused before routing; the access line still names the route.
                route = _template(scope)
            response = error_response(exc)
        except ClientDisconnect:
            # The client went away mid-body: nobody is left to answer, and it is no fault of ours.
            log.debug("client disconnected during %s %s (%s)", scope["method"], route or "-", request_id)
            log_access(scope, request_id, route, None, started, identity)
            return
        except Exception:
            # A bug, not bad input: log it, and still answer in Twilio's format without a traceback.
            log.exception("unhandled error on %s %s (%s)", scope["method"], route or "-", request_id)
            response = error_response(errors.SyncError("Internal server error"))
        response.raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
        await response(scope, receive, send)
        log_access(scope, request_id, route, response.status_code, started, identity)
        metrics.count_request(scope["method"], route, response.status_code, started)

    async def _handle(self, request: Request, pattern: Pattern, params: list[str]) -> Response:
        methods = ROUTES[pattern]
        method = request.scope["method"]
        if method not in methods:
            raise errors.MethodNotAllowed(methods)
        context = Context(
            request=request,
            documents=self.documents,
            params=params,
            query=_query(request.scope["query_string"]),
            base=base_url(request, self.config.public_url),
            account_sid=self.config.account_sid,
            max_body_bytes=self.config.max_body_bytes,
        )
        return await methods[method](context)


def _query(raw: bytes) -> dict[str, str]:
    """The query string's parameters (last value wins); most requests have none."""
    if not raw:
        return {}
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def _template(scope: Scope) -> str | None:
    try:
        pattern, _ = _match(_segments(scope.get("raw_path") or scope["path"].encode()))
    except errors.NotFoundError:
        return None
    return TEMPLATES[pattern]


def _segments(raw_path: bytes) -> list[str]:
    """The decoded segments after ``/v1`` (raw_path is the full path, mount prefix included).

    Each segment is unescaped on its own and must then be UTF-8: ``%FF`` or ``%C3`` alone cannot
    name anything, so such a path is a 404 rather than a lookup of U+FFFD.
    """
    raw = raw_path.split(b"/")
    try:
        raw = raw[raw.index(b"v1") + 1 :]
    except ValueError:
        raw = []
    if raw and raw[-1] == b"":
        raw.pop()
    try:
        return [unquote_to_bytes(segment).decode() for segment in raw]
    except UnicodeDecodeError:
        raise errors.NotFoundError("The requested resource was not found: the path is not UTF-8") from None


def _match(segments: list[str]) -> tuple[Pattern, list[str]]:
    """The route pattern of ``segments`` and its path parameters (see the module docstring)."""
    if len(segments) > 4 and segments[0] == "Services" and segments[2] == "Documents":
        service, rest = segments[1], segments[3:]
        if rest[-1] == "Permissions":
            return _PERMISSIONS, [service, "/".join(rest[:-1])]
        if len(rest) >= 3 and rest[-2] == "Permissions":
            return _PERMISSION, [service, "/".join(rest[:-2]), rest[-1]]
        return _DOCUMENT, [service, "/".join(rest)]
    pattern = _SHAPES.get(len(segments))
    if pattern is None or any(p is not None and p != s for p, s in zip(pattern, segments, strict=True)):
        raise errors.NotFoundError(f"The requested resource /v1/{'/'.join(segments)} was not found")
    return pattern, [s for p, s in zip(pattern, segments, strict=True) if p is None]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
