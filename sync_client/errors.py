"""The errors the client raises, one hierarchy; the server's error replies are mapped to it in one place.

SyncClientError                  code, status, message (code and status are 0 for local failures)
├── ConnectionClosedError        no reply: the connection closed first (``close_code``), or the
│   │                            client was closed; also raised for commands sent after that
│   └── ConnectionDeniedError    the server refused the credentials (4401, 4403, or 4410 with no
│                                ``token_provider`` to get a new token): the client stays down
├── RequestTimeoutError          no reply within the client's ``request_timeout``
├── EventsOverflowError          an ``events()`` iterator fell more than its queue size behind
└── (error replies, by code; else by status)
    ├── InvalidRequestError      400, 413: malformed command, bad data, TTL or unique name
    ├── AuthenticationError      401: e.g. ``update_token`` with an invalid token (2010x)
    ├── PermissionDeniedError    403: 54007, the identity may not do this
    ├── NotFoundError            404: 54100 (no such document), 20404, 54050
    ├── UniqueNameConflictError  409: 54301, ``create_new`` with a unique name that exists
    ├── RevisionMismatchError    412: 54103, ``if_match`` is not the current revision
    └── RateLimitedError         429 with 54009: commands over the connection's rate limit
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectionClosedError",
    "ConnectionDeniedError",
    "EventsOverflowError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RevisionMismatchError",
    "SyncClientError",
    "UniqueNameConflictError",
    "error_from_reply",
]


class SyncClientError(Exception):
    """Base of every error of the client: the Twilio ``code``, the HTTP-like ``status`` and a message."""

    def __init__(self, code: int, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, status={self.status}, message={self.message!r})"


class ConnectionClosedError(SyncClientError):
    """The command got no reply because the connection closed; ``close_code`` says how (None: locally)."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(0, 0, message)
        self.close_code = close_code


class ConnectionDeniedError(ConnectionClosedError):
    """The server refused the credentials; the client will not reconnect."""


class RequestTimeoutError(SyncClientError):
    def __init__(self, message: str) -> None:
        super().__init__(0, 0, message)


class EventsOverflowError(SyncClientError):
    """An ``events()`` consumer fell behind by more than its queue holds; newer events were dropped.

    The document itself is unaffected: ``doc.data`` and ``doc.revision`` are always the latest known.
    """

    def __init__(self, message: str) -> None:
        super().__init__(0, 0, message)


class InvalidRequestError(SyncClientError):
    pass


class AuthenticationError(SyncClientError):
    pass


class PermissionDeniedError(SyncClientError):
    pass


class NotFoundError(SyncClientError):
    pass


class UniqueNameConflictError(SyncClientError):
    pass


class RevisionMismatchError(SyncClientError):
    pass


class RateLimitedError(SyncClientError):
    pass


_BY_CODE: dict[int, type[SyncClientError]] = {
    54100: NotFoundError,
    20404: NotFoundError,
    54050: NotFoundError,
    54301: UniqueNameConflictError,
    54103: RevisionMismatchError,
    54009: RateLimitedError,
    54007: PermissionDeniedError,
}
_BY_STATUS: dict[int, type[SyncClientError]] = {
    400: InvalidRequestError,
    413: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


def error_from_reply(code: int, status: int, message: str) -> SyncClientError:
    """The exception for an error reply: by its code when known, else by its status, else the base."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or SyncClientError
    return cls(code, status, message)
