"""What every websocket protocol adapter is built from (the composition root passes these)."""

from __future__ import annotations

from sync_server.config import Limits
from sync_server.documents import DocumentService
from sync_server.gateway.auth import SocketAuthenticator
from sync_server.hub import Hub


class SocketEndpoint:
    """Base of the ASGI endpoints: the document service, the hub, the authenticator and the limits."""

    def __init__(
        self, documents: DocumentService, hub: Hub, authenticator: SocketAuthenticator, limits: Limits
    ) -> None:
        self.documents = documents
        self.hub = hub
        self.authenticator = authenticator
        self.limits = limits
