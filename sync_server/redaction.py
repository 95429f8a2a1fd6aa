"""Keeps access tokens out of logs.

uvicorn logs each websocket handshake with its full path and query string, where browsers put the
access token (``/ws?token=…``). This filter rewrites such records before any handler sees them.
It is installed on uvicorn's loggers in every worker process by :func:`install`.
"""

from __future__ import annotations

import logging
import re

_SECRET_PARAMS = re.compile(r"(?i)((?:token|access_token|auth_token|secret)=)[^&\s\"']+")


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = _SECRET_PARAMS.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg = redacted
            record.args = ()
        return True


def install() -> None:
    secret_filter = RedactSecrets()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "sync_server"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(secret_filter)
