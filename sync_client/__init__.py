"""An asyncio client for the sync server's native websocket protocol, in the Twilio Sync SDK's words.

::

    async with SyncClient("http://127.0.0.1:8080", token=token) as client:
        doc = await client.document("board", data={"cells": []})
        doc.on("updated", lambda event: print(event.revision, event.data))
        await doc.update({"turn": "x"})
        await doc.mutate(lambda data: {**data, "moves": data.get("moves", 0) + 1})

The client reconnects by itself (jittered exponential backoff, following ``protocol.reconnect_policy``:
never after 4401/4403, after a fresh token from ``token_provider`` after 4410), resubscribes every open
document from the revision it holds and catches up, so documents always converge to the server's
latest state. A resubscribe the server refuses for now (20503 while its Redis restarts) is retried with
the same backoff until it succeeds or the document turns out to be gone (``removed``). Commands
issued while disconnected wait for the next connection (``request_timeout`` bounds the wait). A
command in flight when the connection drops is sent again only if it cannot take effect twice (open,
fetch, subscribe); writes (set, update, set_ttl, remove, create_new) fail with
:class:`ConnectionClosedError` instead, since they may or may not have been applied.

Errors are :class:`SyncClientError` subclasses (see :mod:`sync_client.errors`). Nothing here imports
the server.
"""

from sync_client.backoff import Backoff
from sync_client.client import SyncClient
from sync_client.document import SyncDocument
from sync_client.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionDeniedError,
    EventsOverflowError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeoutError,
    RevisionMismatchError,
    SyncClientError,
    UniqueNameConflictError,
)
from sync_client.events import (
    ConnectionState,
    DocumentAccessRevoked,
    DocumentEvent,
    DocumentRemoved,
    DocumentUpdated,
    EventStream,
)

__all__ = [
    "AuthenticationError",
    "Backoff",
    "ConnectionClosedError",
    "ConnectionDeniedError",
    "ConnectionState",
    "DocumentAccessRevoked",
    "DocumentEvent",
    "DocumentRemoved",
    "DocumentUpdated",
    "EventStream",
    "EventsOverflowError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RevisionMismatchError",
    "SyncClient",
    "SyncClientError",
    "SyncDocument",
    "UniqueNameConflictError",
]
