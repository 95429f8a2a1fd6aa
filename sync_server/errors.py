"""The one error hierarchy of the server.

Every failure a client can cause is a :class:`SyncError` carrying the Twilio error ``code``, the HTTP
``status`` and a human ``message``. The REST layer and the websocket gateways map it to the wire in one
place each (``rest/responses.py``, the gateway's reply encoder); nothing else formats errors.

    SyncError
    ├── AuthenticationError        20003 / 401
    ├── ForbiddenError             54007 / 403
    ├── NotFoundError              20404 / 404 (generic)
    │   ├── ServiceNotFound        54050 / 404
    │   ├── DocumentNotFound       20404 / 404 on REST, 54100 on the sockets
    │   └── PermissionNotFound     54354 / 404
    ├── ValidationError            400 with a specific code (54008, 54101, 54011, 54302, 54351, 54453, 54454…)
    ├── DataTooLarge               54006 / 413
    ├── UniqueNameConflict         54301 / 409
    ├── RevisionMismatch           54103 / 412
    ├── RateLimited                54009 / 429
    ├── MethodNotAllowed           20004 / 405, with the allowed methods (the ``Allow`` header)
    ├── UnsupportedMediaType       20001 / 415 (a body that is not a form)
    ├── RequestHeadTooLarge        20001 / 431 (headers) or 414 (request line), before any parsing
    ├── HostNotAllowed             20001 / 400 (a Host header outside the allowed hosts)
    └── UnavailableError           20503 / 503 (Redis unreachable, loading, busy, read-only…)
        └── StoreFull              20507 / 507 (Redis out of memory: writes refused, reads work)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

MORE_INFO = "https://www.twilio.com/docs/errors/{code}"


class SyncError(Exception):
    """Base of every client-visible error: a Twilio ``code``, an HTTP ``status`` and a message."""

    code: ClassVar[int] = 20500
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_dict(self) -> dict[str, object]:
        """The Twilio error body.

        Never add both ``type`` and ``title``: twilio-python then reads the body as RFC 9457.
        """
        return {
            "code": self.code,
            "message": self.message,
            "more_info": MORE_INFO.format(code=self.code),
            "status": self.status,
        }


class AuthenticationError(SyncError):
    code = 20003
    status = 401


class ForbiddenError(SyncError):
    code = 54007
    status = 403


class NotFoundError(SyncError):
    code = 20404
    status = 404


class ServiceNotFound(NotFoundError):
    code = 54050


class DocumentNotFound(NotFoundError):
    """REST answers 20404 for a missing document (as Twilio's REST API does); the sockets say 54100."""

    code = 20404
    socket_code: ClassVar[int] = 54100


class PermissionNotFound(NotFoundError):
    code = 54354


class ValidationError(SyncError):
    code = 20001
    status = 400


class DataTooLarge(SyncError):
    code = 54006
    status = 413


class UniqueNameConflict(SyncError):
    code = 54301
    status = 409


class RevisionMismatch(SyncError):
    code = 54103
    status = 412


class RateLimited(SyncError):
    code = 54009
    status = 429


_METHOD_ORDER = {m: i for i, m in enumerate(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))}


class MethodNotAllowed(SyncError):
    """The path exists but not with this method; ``allowed`` becomes the ``Allow`` header."""

    code = 20004
    status = 405

    def __init__(self, allowed: Iterable[str]) -> None:
        # In one fixed order: Starlette keeps a route's methods in a set.
        self.allowed = tuple(
            sorted(set(allowed), key=lambda m: (_METHOD_ORDER.get(m, len(_METHOD_ORDER)), m))
        )
        super().__init__(f"Method not allowed; allowed: {', '.join(self.allowed)}")


class UnsupportedMediaType(SyncError):
    """Twilio's API takes ``application/x-www-form-urlencoded`` bodies only. Twilio documents no
    code for this, so it is the generic invalid-parameter code with HTTP's own status."""

    code = 20001
    status = 415


class RequestHeadTooLarge(SyncError):
    """Answered by the HTTP protocol itself (``http_protocol.py``) before the request reaches the app."""

    code = 20001
    status = 431


class UnavailableError(SyncError):
    code = 20503
    status = 503


class StoreFull(UnavailableError):
    """Redis refuses writes because it is out of memory (``maxmemory`` with ``noeviction``).

    507 Insufficient Storage rather than 503: the server is up and reads still work, only storing
    fails, and generic HTTP retry policies (which retry 503) should not hammer a full store. 20507
    follows Twilio's HTTP-derived codes (20404, 20429, 20503); Twilio itself has no such code.
    A subclass of :class:`UnavailableError`, so code that tolerates a store outage tolerates this too.
    """

    code = 20507
    status = 507


class HostNotAllowed(ValidationError):
    """The request's ``Host`` is not one this server may put into links (see ``hosts.py``)."""


# Validation codes, named once so that REST and the sockets agree.
INVALID_JSON = 54008
INVALID_DATA = 54101
INVALID_TTL = 54011
INVALID_UNIQUE_NAME = 54302
INVALID_IDENTITY = 54351
INVALID_PAGE_TOKEN = 54453
INVALID_PAGE_SIZE = 54454
INVALID_IF_MATCH = 54003
INVALID_PARAMETER = 20001
