"""Twilio's date format: exactly ``YYYY-MM-DDTHH:MM:SSZ`` in UTC (twilio-python parses nothing else)."""

from __future__ import annotations

import time
from functools import lru_cache


@lru_cache(maxsize=4096)
def format_timestamp(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def format_optional(seconds: int | None) -> str | None:
    return None if not seconds else format_timestamp(seconds)
