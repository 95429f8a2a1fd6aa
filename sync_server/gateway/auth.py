"""Who a websocket client is: an access token (browsers, apps) or Basic credentials (backends).

Tokens come from the ``token`` query parameter, ``Authorization: Bearer …`` or ``X-Twilio-Token``.
Basic credentials (the account or an API key, as for REST) make a system principal, never restricted
by access control, acting as the identity ``system`` unless ``identity`` is given, on the service
named by ``service`` (default: the default service). A token makes a client principal, restricted by
the service's access control; ``service`` is then optional and must name the token's own service
(else 4403).
Tokens are never logged and never echoed in errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.types import Scope

from sync_server import errors, metrics
from sync_server.documents import DocumentService
from sync_server.principal import SYSTEM_IDENTITY, Principal
from sync_server.rest.auth import BasicAuth
from sync_server.tokens import AccessGrant, TokenVerifier
from sync_server.validation import check_identity


@dataclass(frozen=True, slots=True)
class Authenticated:
    principal: Principal
    grant: AccessGrant | None
    """The verified token, or None for Basic credentials (which do not expire)."""


class SocketAuthenticator:
    def __init__(self, documents: DocumentService, verifier: TokenVerifier, basic: BasicAuth) -> None:
        self._documents = documents
        self._verifier = verifier
        self._basic = basic

    def authenticate(self, scope: Scope) -> Authenticated:
        """Raises an ``AuthenticationError`` (token errors carry Twilio's 2010x codes)."""
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        authorization: bytes | None = headers.get("authorization")
        token = query.get("token")
        if token is None and authorization is not None and authorization[:7].lower() == b"bearer ":
            token = authorization[7:].strip().decode("latin-1")
        if token is None and "x-twilio-token" in headers:
            token = headers["x-twilio-token"].decode("latin-1")
        if token is not None:
            authenticated = self.verify_token(token)
            asked = query.get("service")
            if (
                asked is not None
                and self._documents.service_sid(asked) != authenticated.principal.service_sid
            ):
                raise errors.ForbiddenError("The access token does not grant access to this service")
            return authenticated
        if authorization is None:
            raise errors.AuthenticationError("An access token or credentials are required")
        self._basic.check(authorization)
        identity = check_identity(query.get("identity", SYSTEM_IDENTITY))
        service_sid = self._documents.service_sid(query.get("service"))
        return Authenticated(Principal.system(service_sid, identity), None)

    def verify_token(self, token: str) -> Authenticated:
        try:
            grant = self._verifier.verify(token)
        except errors.SyncError as exc:
            metrics.token_refused(exc.code)
            raise
        service_sid = self._documents.service_sid(grant.service_sid)
        return Authenticated(Principal.client(grant.identity, service_sid), grant)
