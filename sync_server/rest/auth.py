"""HTTP Basic authentication with the account SID and auth token, or an API key SID and secret.

The accepted ``Authorization`` header values are computed once; a request's header is compared
with each in constant time, so neither the secret nor its length leaks through timing. Headers
that differ only in spelling (scheme case, spacing) are decoded and compared field by field, also
in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable

from sync_server import errors


class BasicAuth:
    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = [(user.encode(), secret.encode()) for user, secret in pairs if user and secret]
        self._headers = [b"Basic " + base64.b64encode(user + b":" + secret) for user, secret in self._pairs]

    def check(self, header: bytes | None) -> None:
        """Raises :class:`AuthenticationError` (20003) unless ``header`` carries valid credentials."""
        if header is None:
            raise errors.AuthenticationError("Authenticate")
        matched = False
        for expected in self._headers:
            matched |= hmac.compare_digest(header, expected)
        if matched or self._check_decoded(header):
            return
        raise errors.AuthenticationError("Authenticate")

    def _check_decoded(self, header: bytes) -> bool:
        scheme, _, encoded = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, secret = decoded.partition(b":")
        if not sep:
            return False
        matched = False
        for expected_user, expected_secret in self._pairs:
            same_user = hmac.compare_digest(user, expected_user)
            same_secret = hmac.compare_digest(secret, expected_secret)
            matched |= same_user & same_secret
        return matched
