"""Twilio-style SIDs: two capital letters and 32 lowercase hex digits."""

from __future__ import annotations

import re
import secrets

SERVICE_PREFIX = "IS"
DOCUMENT_PREFIX = "ET"

# Any SID-shaped string, whatever its prefix: such strings are never valid unique names.
SID_SHAPE = re.compile(r"[A-Z]{2}[0-9a-f]{32}")


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def is_sid(value: str, prefix: str) -> bool:
    return len(value) == 34 and value.startswith(prefix) and SID_SHAPE.fullmatch(value) is not None
