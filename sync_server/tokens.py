"""Twilio-format access tokens: verify the ones client SDKs present, mint them for development.

A token is a JWT signed with HS256 by an API key secret, exactly as ``twilio.jwt.access_token.AccessToken``
(Python) and ``AccessToken`` (Node) produce it::

    header  {"alg": "HS256", "cty": "twilio-fpa;v=1", "typ": "JWT"}
    payload {"jti": "SK…-<now>", "grants": {"data_sync": {"service_sid": "IS…" | "default"},
             "identity": "alice"}, "iss": "SK…", "exp": …, "nbf": … (Python) | "iat": … (Node), "sub": "AC…"}

Verification is written out by hand with the standard library (``hmac``, ``hashlib``, ``base64``) rather than
through PyJWT so that every check below is explicit, happens in a known order and maps to one Twilio code.
Failures are :class:`~sync_server.errors.AuthenticationError` subclasses (HTTP 401)::

    AuthenticationError                    20003
    └── InvalidAccessToken                 20101  malformed: not a JWT, bad base64 or JSON, too long
        ├── InvalidAccessTokenHeader       20102  alg is not HS256 (``none`` included), bad typ/cty, crit
        ├── InvalidAccessTokenIssuer       20103  unknown ``iss`` API key, or ``sub`` is another account
        ├── AccessTokenExpired             20104  ``exp`` missing, not a number, or past (with leeway)
        ├── AccessTokenNotYetValid         20105  ``nbf`` in the future (with leeway) or not a number
        ├── InvalidAccessTokenGrants       20106  no identity, identity too long, no or a malformed
        │                                         data_sync (Sync) grant
        ├── InvalidAccessTokenSignature    20107  HMAC mismatch
        └── AccessTokenLifetimeExceeded    20157  valid for more than 24 h (Twilio's maximum, with leeway)

A token's lifetime runs from the earliest of ``nbf``, ``iat`` and now to ``exp``, so that neither a long
``exp - nbf`` nor an ``exp`` far in the future of a token without ``nbf``/``iat`` gets through. A token
without a ``data_sync`` grant is not a Sync token and is refused with 20106, Twilio's code for grants that
lack the product's grant; a ``data_sync`` grant that names no service means the default service.

No message ever contains the token or any value read from it: tokens are bearer credentials, and the
claims are attacker-controlled text until the signature is checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from sync_server.errors import AuthenticationError

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_IDENTITY_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MAX_TOKEN_LIFETIME",
    "AccessGrant",
    "AccessTokenExpired",
    "AccessTokenLifetimeExceeded",
    "AccessTokenNotYetValid",
    "InvalidAccessToken",
    "InvalidAccessTokenGrants",
    "InvalidAccessTokenHeader",
    "InvalidAccessTokenIssuer",
    "InvalidAccessTokenSignature",
    "TokenVerifier",
    "mint_access_token",
]

DEFAULT_LEEWAY = 5.0
"""Seconds of clock skew tolerated on ``exp``, ``nbf`` and the lifetime."""
MAX_TOKEN_LIFETIME = 86_400
"""Twilio's maximum access token lifetime in seconds (24 h): longer tokens are refused, never minted."""
_DEFAULT_SERVICE = "default"
MAX_IDENTITY_LENGTH = 256
MAX_TOKEN_LENGTH = 8192
"""Longer tokens are refused before any decoding or hashing (real Sync tokens are well under 1 KiB)."""

_HEADER = {"alg": "HS256", "cty": "twilio-fpa;v=1", "typ": "JWT"}
# Three base64url segments without padding. Checking the alphabet up front means the lenient stdlib
# decoder never silently drops characters, and the signature can be compared as text. The signature may
# be empty (an unsecured ``alg: none`` token) so that such a token is refused for its header (20102).
_JWT_SHAPE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")


class InvalidAccessToken(AuthenticationError):
    code = 20101


class InvalidAccessTokenHeader(InvalidAccessToken):
    code = 20102


class InvalidAccessTokenIssuer(InvalidAccessToken):
    code = 20103


class AccessTokenExpired(InvalidAccessToken):
    code = 20104


class AccessTokenNotYetValid(InvalidAccessToken):
    code = 20105


class InvalidAccessTokenGrants(InvalidAccessToken):
    code = 20106


class InvalidAccessTokenSignature(InvalidAccessToken):
    code = 20107


class AccessTokenLifetimeExceeded(InvalidAccessToken):
    """Twilio's "Expiration Time Exceeds Maximum Time Allowed". Not an :class:`AccessTokenExpired`: a
    client that refreshes an expired token must not be told to fetch another of these."""

    code = 20157


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What a verified token allows.

    ``service_sid`` is the ``data_sync`` grant's service as written in the token (an ``IS…`` SID or the
    alias ``default``, which the caller resolves); ``default`` when the grant names no service.
    """

    identity: str
    service_sid: str
    expires_at: int


class TokenVerifier:
    """Verifies access tokens signed by one of ``api_keys`` (API key SID → secret) for ``account_sid``."""

    def __init__(
        self, account_sid: str, api_keys: Mapping[str, str], *, leeway: float = DEFAULT_LEEWAY
    ) -> None:
        # An empty secret would make every token forgeable by anyone who guesses it is empty.
        if not all(api_keys.values()):
            raise ValueError("API key secrets must be non-empty")
        self._account_sid = account_sid
        self._secrets = {sid: secret.encode() for sid, secret in api_keys.items()}
        self._leeway = leeway

    def verify(self, token: str, now: float | None = None) -> AccessGrant:
        """Return the grant of a valid ``token`` at time ``now`` (default: the wall clock).

        Raises an :class:`InvalidAccessToken` subclass otherwise. Checks run in this order: shape,
        header, issuer, signature, subject, expiry, not-before, lifetime, grants; nothing read from the
        payload is trusted before the signature has been checked, except ``iss``, used only to pick the
        secret.
        """
        now = time.time() if now is None else now
        match = _JWT_SHAPE.fullmatch(token) if len(token) <= MAX_TOKEN_LENGTH else None
        if match is None:
            raise InvalidAccessToken("Invalid Access Token: not a JWT")
        header_b64, payload_b64, signature_b64 = match.groups()
        _check_header(_decode_segment(header_b64))
        payload = _decode_segment(payload_b64)
        secret = self._secrets.get(payload["iss"]) if isinstance(payload.get("iss"), str) else None
        if secret is None:
            raise InvalidAccessTokenIssuer("Invalid Access Token issuer: unknown API key")
        _check_signature(secret, f"{header_b64}.{payload_b64}", signature_b64)
        if payload.get("sub") != self._account_sid:
            raise InvalidAccessTokenIssuer("Invalid Access Token subject: not this account")
        expires_at = _check_times(payload, now, self._leeway)
        identity, service_sid = _read_grants(payload.get("grants"))
        return AccessGrant(identity=identity, service_sid=service_sid, expires_at=expires_at)


def mint_access_token(
    account_sid: str,
    api_key_sid: str,
    api_key_secret: str,
    identity: str,
    service_sid: str = "default",
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """A Sync access token shaped as twilio-python's ``AccessToken(...).to_jwt()`` makes it.

    For ASCII identities the output is byte-for-byte what the official helper produces at the same
    second (same header, same claim order, same compact JSON), so clients cannot tell them apart.
    """
    if not identity or len(identity) > MAX_IDENTITY_LENGTH:
        raise ValueError(f"identity must be 1..{MAX_IDENTITY_LENGTH} characters")
    if not 0 < ttl <= MAX_TOKEN_LIFETIME:
        raise ValueError(f"ttl must be 1..{MAX_TOKEN_LIFETIME} seconds")
    issued = int(time.time() if now is None else now)
    payload = {
        "jti": f"{api_key_sid}-{issued}",
        "grants": {"data_sync": {"service_sid": service_sid}, "identity": identity},
        "iss": api_key_sid,
        "exp": issued + ttl,
        "nbf": issued,
        "sub": account_sid,
    }
    signing_input = f"{_b64encode(orjson.dumps(_HEADER))}.{_b64encode(orjson.dumps(payload))}"
    return f"{signing_input}.{_sign(api_key_secret.encode(), signing_input)}"


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _sign(secret: bytes, signing_input: str) -> str:
    return _b64encode(hmac.digest(secret, signing_input.encode("ascii"), hashlib.sha256))


def _decode_segment(segment: str) -> dict[str, Any]:
    """A header or payload segment as a JSON object; anything else is a malformed token."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        # ``from None``: the decoder's exception can quote the decoded text.
        raise InvalidAccessToken("Invalid Access Token: segment is not base64url JSON") from None
    if not isinstance(value, dict):
        raise InvalidAccessToken("Invalid Access Token: segment is not a JSON object")
    return value


def _check_header(header: Mapping[str, Any]) -> None:
    # Only HS256 is ever computed, so algorithm confusion ("none", RS256 with the secret as a public
    # key) cannot happen; the check still rejects such tokens with the right code.
    if header.get("alg") != "HS256":
        raise InvalidAccessTokenHeader("Invalid Access Token header: alg must be HS256")
    if header.get("typ", "JWT") != "JWT":
        raise InvalidAccessTokenHeader("Invalid Access Token header: typ must be JWT")
    if header.get("cty", _HEADER["cty"]) != _HEADER["cty"]:
        raise InvalidAccessTokenHeader("Invalid Access Token header: cty must be twilio-fpa;v=1")
    # RFC 7515 §4.1.11: a verifier must reject critical extensions it does not understand (all of them).
    if "crit" in header:
        raise InvalidAccessTokenHeader("Invalid Access Token header: unsupported crit")


def _check_signature(secret: bytes, signing_input: str, signature_b64: str) -> None:
    # Comparing the base64url text (not decoded bytes) also rejects non-canonical encodings of a valid
    # MAC; both sides are ASCII, which compare_digest requires of str arguments.
    if not hmac.compare_digest(_sign(secret, signing_input), signature_b64):
        raise InvalidAccessTokenSignature("Invalid Access Token signature")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_times(payload: Mapping[str, Any], now: float, leeway: float) -> int:
    """Return ``exp`` as an int after checking ``exp``, ``nbf`` and the lifetime against ``now``."""
    exp = payload.get("exp")
    if not _is_number(exp):
        raise AccessTokenExpired("Access Token expiration date invalid")
    if exp + leeway <= now:
        raise AccessTokenExpired("Access Token expired")
    nbf = payload.get("nbf")
    if nbf is not None and not _is_number(nbf):
        raise AccessTokenNotYetValid("Access Token not-before date invalid")
    if nbf is not None and nbf > now + leeway:
        raise AccessTokenNotYetValid("Access Token not yet valid")
    iat = payload.get("iat")
    if iat is not None and not _is_number(iat):
        raise InvalidAccessToken("Invalid Access Token: issued-at date invalid")
    start = min([now, *(claim for claim in (nbf, iat) if claim is not None)])
    if exp - start > MAX_TOKEN_LIFETIME + leeway:
        raise AccessTokenLifetimeExceeded("Access Token expiration time exceeds the maximum of 24 hours")
    return int(exp)


def _read_grants(grants: object) -> tuple[str, str]:
    """Return ``(identity, service_sid)`` from the ``grants`` claim."""
    if not isinstance(grants, dict):
        raise InvalidAccessTokenGrants("Invalid Access Token grants: missing")
    identity = grants.get("identity")
    # Twilio requires an identity for Sync: it is the ``created_by`` of writes and the ACL subject.
    if not isinstance(identity, str) or not identity:
        raise InvalidAccessTokenGrants("Invalid Access Token grants: identity is required")
    if len(identity) > MAX_IDENTITY_LENGTH:
        raise InvalidAccessTokenGrants("Invalid Access Token grants: identity is too long")
    sync = grants.get("data_sync")
    if sync is None:
        raise InvalidAccessTokenGrants("Invalid Access Token grants: a Sync (data_sync) grant is required")
    if not isinstance(sync, dict):
        raise InvalidAccessTokenGrants("Invalid Access Token grants: data_sync must be an object")
    service_sid = sync.get("service_sid")
    if service_sid is None:  # the helpers' SyncGrant() leaves it out: the starters' default service
        return identity, _DEFAULT_SERVICE
    if not isinstance(service_sid, str) or not service_sid:
        raise InvalidAccessTokenGrants("Invalid Access Token grants: invalid data_sync service_sid")
    return identity, service_sid
