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
    ├── ValidationError            20001 / 400
    │   ├── InvalidJson            54008      InvalidData 54101      InvalidTtl 54011
    │   ├── InvalidUniqueName      54302      InvalidIdentity 54351  InvalidIfMatch 54003
    │   ├── InvalidPageToken       54453      InvalidPageSize 54454
    │   └── HostNotAllowed         20001 (a Host header outside the allowed hosts)
    ├── DataTooLarge               54006 / 413
    ├── UniqueNameConflict         54301 / 409
    ├── RevisionMismatch           54103 / 412
    ├── RateLimited                54009 / 429
    ├── TooManySubscriptions       20429 / 429 (subscriptions of one connection)
    ├── MethodNotAllowed           20004 / 405, with the allowed methods (the ``Allow`` header)
    ├── UnsupportedMediaType       20001 / 415 (a body that is not a form)
    ├── RequestHeadTooLarge        20001 / 431 (headers), before any parsing
    │   └── RequestTargetTooLong   20001 / 414 (request line)
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

    def __init__(self, message: str) -> None:
        # Code and status belong to the class, never to an instance: one class per wire error, so
        # each transport maps errors to its wire in one place.
        super().__init__(message)
        self.message = message

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


class InvalidJson(ValidationError):
    code = 54008


class InvalidData(ValidationError):
    """The data is JSON but not an object."""

    code = 54101


class InvalidTtl(ValidationError):
    code = 54011


class InvalidUniqueName(ValidationError):
    code = 54302


class InvalidIdentity(ValidationError):
    code = 54351


class InvalidPageToken(ValidationError):
    code = 54453


class InvalidPageSize(ValidationError):
    code = 54454


class InvalidIfMatch(ValidationError):
    code = 54003


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


class TooManySubscriptions(SyncError):
    """One connection may subscribe to a bounded number of documents (``SYNC_MAX_SUBSCRIPTIONS``)."""

    code = 20429
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


class RequestTargetTooLong(RequestHeadTooLarge):
    status = 414


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


# The validation codes by name (the API description lists them per operation).
INVALID_JSON = InvalidJson.code
INVALID_DATA = InvalidData.code
INVALID_TTL = InvalidTtl.code
INVALID_UNIQUE_NAME = InvalidUniqueName.code
INVALID_IDENTITY = InvalidIdentity.code
INVALID_PAGE_TOKEN = InvalidPageToken.code
INVALID_PAGE_SIZE = InvalidPageSize.code
INVALID_IF_MATCH = InvalidIfMatch.code
INVALID_PARAMETER = ValidationError.code
