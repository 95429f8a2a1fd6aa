"""What every websocket protocol adapter is built from (the composition root passes these), and how a
connection asks it for a session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import Scope

from sync_server.config import Limits
from sync_server.documents import DocumentService
from sync_server.gateway.auth import SocketAuthenticator
from sync_server.gateway.outbox import Outbox
from sync_server.hub import Hub

if TYPE_CHECKING:
    from sync_server.gateway.session import Session


class Refused(Exception):
    """Raised by :meth:`SocketEndpoint.open`: the handshake is accepted, then the connection is closed
    at once with ``code``. Browsers cannot read the status of a refused handshake, only a close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class SocketEndpoint:
    """Base of the endpoints: the document service, the hub, the authenticator and the limits."""

    def __init__(
        self, documents: DocumentService, hub: Hub, authenticator: SocketAuthenticator, limits: Limits
    ) -> None:
        self.documents = documents
        self.hub = hub
        self.authenticator = authenticator
        self.limits = limits

    def open(self, scope: Scope, outbox: Outbox) -> Session:
        """The session of a connection whose handshake (``scope``: its path, query string and
        lowercase headers, as in ASGI) is about to be accepted; the connection then calls its
        :meth:`Session.start`. Raises :class:`Refused` to close the connection right after the accept."""
        raise NotImplementedError
