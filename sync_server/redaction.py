"""Keeps access tokens out of logs.

uvicorn logs each request and websocket handshake with its full path and query string, where
browsers put the access token (``/ws?token=…``). Every log record has the values of its secret
query parameters (``token``, ``access_token``, ``auth_token``, ``secret``, matched as whole parameter
names: ``PageToken`` is a paging cursor, not a secret, and stays readable) replaced by ``<redacted>``.

The redaction rewrites the record's *arguments* in place and keeps their shape: uvicorn's access
formatter unpacks its five arguments, so replacing the message (and emptying the arguments) would make
it fail and lose the line. It runs when a record is created (:func:`logging.setLogRecordFactory`),
which covers every logger, children of ``sync_server`` and uvicorn's included, whatever handlers
the operator configures; a filter on a logger would miss records propagated from its children.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

_SECRET_PARAMS = re.compile(r"(?i)(?<![\w.-])((?:token|access_token|auth_token|secret)=)[^&\s\"']+")
_REDACTED = r"\1<redacted>"


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters replaced."""
    return _SECRET_PARAMS.sub(_REDACTED, text) if "=" in text else text


def redact_record(record: logging.LogRecord) -> None:
    """Redacts the message and the string arguments of ``record`` in place."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    args = record.args
    if isinstance(args, tuple):
        if any(isinstance(arg, str) and "=" in arg for arg in args):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in args)
    elif isinstance(args, Mapping):
        record.args = {key: redact(v) if isinstance(v, str) else v for key, v in args.items()}


_installed: list[Callable[..., logging.LogRecord]] = []


def install() -> None:
    """Wraps the process's log record factory once (idempotent)."""
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    _installed.append(factory)
    logging.setLogRecordFactory(factory)
