"""Websocket close codes the server sends, and what a client should do after each.

The 44xx codes mirror HTTP statuses and mean "something about *this* client must change before it
reconnects"; 4508 (and any other 45xx) means "reconnect, nothing to fix". Clients look the code up in
:data:`CLOSE_CODES` or call :func:`reconnect_policy`, which also covers codes not listed.

| code | name | meaning | reconnect? |
|------|------|---------|------------|
| 1000 | NORMAL | normal closure (the client asked, or the session ended cleanly) | no |
| 1001 | GOING_AWAY | the server is shutting down or restarting | yes |
| 1006 | ABNORMAL | no close frame (network failure); seen by clients, never sent | yes |
| 1008 | POLICY_VIOLATION | malformed handshake or a frame that breaks the protocol | no |
| 1009 | MESSAGE_TOO_BIG | a frame was larger than the server accepts | no |
| 1011 | INTERNAL_ERROR | unexpected server error | yes |
| 4401 | INVALID_TOKEN | invalid or forged credentials | no, not with the same token |
| 4403 | FORBIDDEN | the token's service grant does not allow this service | no |
| 4410 | TOKEN_EXPIRED | the access token expired | after getting a new token |
| 4429 | RATE_LIMITED | command rate far over the limit | after a backoff |
| 4508 | TOO_SLOW | the client could not keep up with its events | yes; resubscribe with last revisions |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType

__all__ = ["CLOSE_CODES", "CloseCode", "CloseInfo", "Reconnect", "reconnect_policy"]


class CloseCode(IntEnum):
    """The close codes of the protocol; members are ints, so they can be passed to ``close(code=…)``."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    INVALID_TOKEN = 4401
    FORBIDDEN = 4403
    TOKEN_EXPIRED = 4410
    RATE_LIMITED = 4429
    TOO_SLOW = 4508


class Reconnect(StrEnum):
    """What a client should do after a close."""

    NO = "no"
    """Stop: reconnecting as before would fail the same way."""
    YES = "yes"
    """Reconnect with the usual jittered backoff, then resubscribe with the last revisions seen."""
    NEW_TOKEN = "new_token"  # noqa: S105 (a policy name, not a credential)
    """Obtain a fresh access token first, then reconnect."""
    BACKOFF = "backoff"
    """Reconnect, but only after a long backoff (seconds, growing on repeats)."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    meaning: str
    reconnect: Reconnect


CLOSE_CODES: Mapping[CloseCode, CloseInfo] = MappingProxyType(
    {
        CloseCode.NORMAL: CloseInfo("normal closure", Reconnect.NO),
        CloseCode.GOING_AWAY: CloseInfo("server going away (shutdown or restart)", Reconnect.YES),
        CloseCode.ABNORMAL: CloseInfo("connection lost without a close frame (never sent)", Reconnect.YES),
        CloseCode.POLICY_VIOLATION: CloseInfo("policy violation or malformed handshake", Reconnect.NO),
        CloseCode.MESSAGE_TOO_BIG: CloseInfo("frame too large", Reconnect.NO),
        CloseCode.INTERNAL_ERROR: CloseInfo("internal server error", Reconnect.YES),
        CloseCode.INVALID_TOKEN: CloseInfo("invalid or forged credentials", Reconnect.NO),
        CloseCode.FORBIDDEN: CloseInfo("the token's service grant does not allow this service", Reconnect.NO),
        CloseCode.TOKEN_EXPIRED: CloseInfo("access token expired", Reconnect.NEW_TOKEN),
        CloseCode.RATE_LIMITED: CloseInfo("command rate far over the limit", Reconnect.BACKOFF),
        CloseCode.TOO_SLOW: CloseInfo("client too slow to keep up with its events", Reconnect.YES),
    }
)


def reconnect_policy(code: int) -> Reconnect:
    """What to do after a close with ``code``, including codes this version does not list.

    Unlisted 45xx codes reconnect and unlisted 40xx-44xx codes do not (a newer server may add codes in
    those ranges); any other unlisted code (e.g. 1012 "service restart", 1013 "try again later") is treated
    as transient and retried after a backoff.
    """
    if code in CLOSE_CODES:
        return CLOSE_CODES[CloseCode(code)].reconnect
    if 4500 <= code <= 4999:
        return Reconnect.YES
    if 4000 <= code <= 4499:
        return Reconnect.NO
    return Reconnect.BACKOFF
