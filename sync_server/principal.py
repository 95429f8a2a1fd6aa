"""Who is asking: the one value every call into the document service carries.

A principal is either a **system** principal (REST, and websocket clients that authenticated with the
account's or an API key's Basic credentials), which access control never restricts, or a **client**
principal (an access token's identity), which a service with ``acl_enabled`` restricts to the
permissions granted to its identity. ``endpoint_id`` names the client's connection; events and
webhooks report it as where a change came from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SYSTEM_IDENTITY = "system"


@dataclass(frozen=True, slots=True)
class Principal:
    identity: str
    service_sid: str
    """The real service SID (the ``default`` alias already resolved)."""
    restricted: bool = False
    """True for access-token clients: subject to the service's access control."""
    endpoint_id: str | None = None
    """The connection a client acts through; None for REST."""

    @classmethod
    def system(cls, service_sid: str, identity: str = SYSTEM_IDENTITY) -> Principal:
        return cls(identity, service_sid)

    @classmethod
    def client(cls, identity: str, service_sid: str) -> Principal:
        return cls(identity, service_sid, restricted=True)

    def on_endpoint(self, endpoint_id: str) -> Principal:
        """The same principal acting through the connection ``endpoint_id``."""
        return replace(self, endpoint_id=endpoint_id)

    def same_client(self, other: Principal) -> bool:
        """Whether ``other`` is this principal, wherever it connects from (for token renewals)."""
        return (self.identity, self.service_sid, self.restricted) == (
            other.identity,
            other.service_sid,
            other.restricted,
        )

    @property
    def acl_identity(self) -> str:
        """What the scripts check permissions for: '' means unrestricted."""
        return self.identity if self.restricted else ""
