"""Request ids, the access line, and the server's two log formats (``--log-format text|json``).

Every HTTP response of the app carries ``Twilio-Request-Id: RQ<32 hex>``, new per request, as
Twilio's API does. The same id is on the request's access line and on every record logged while the
request is handled (a :class:`~contextvars.ContextVar` that the formatters read, so a warning from
the store during a REST write carries it without being passed the id).

The app writes the access lines itself (logger ``sync_server.access``, one per request; uvicorn's own
is turned off in cli.py), because only the app knows the route template, the request id and the
caller. Lines name the **route template** (``/v1/Services/{ServiceSid}/Documents/{Sid}``), never
the raw path or query: unique names and identities in paths may be personal data, and query strings
may hold tokens. A request that matches no route has no route.

:func:`log_config` is the ``logging.config.dictConfig`` dict given to uvicorn, which applies it in
the supervisor and in every worker process. Both formatters pass their output through
:func:`~sync_server.redaction.redact` as well: records are already redacted when created (in
processes that built the app), and this also covers the supervisor and exception texts.
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.types import Scope
from uvicorn.logging import DefaultFormatter

from sync_server.redaction import redact

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "TextFormatter",
    "current_request_id",
    "log_access",
    "log_config",
    "new_request_id",
]

# Twilio's Twilio-Request-Id (uvicorn writes every header name in lowercase anyway).
REQUEST_ID_HEADER = b"twilio-request-id"
ACCESS_LOGGER = "sync_server.access"
# uvicorn's level names (it registers TRACE) and numbers, so the app's loggers follow --log-level.
LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}
# Record attributes (passed as ``extra``) that a JSON line carries when they are set.
FIELDS = ("method", "route", "status", "duration_ms", "identity", "client")

current_request_id: ContextVar[str | None] = ContextVar("sync_request_id", default=None)
"""The id of the request being handled in this task, for records that do not carry one."""

access_log = logging.getLogger(ACCESS_LOGGER)


def new_request_id() -> str:
    """``RQ`` and 32 lowercase hex digits from the OS's random source (about a microsecond): ids
    stay unique across worker processes without any coordination."""
    return "RQ" + os.urandom(16).hex()


def log_access(
    scope: Scope,
    request_id: str,
    route: str | None,
    status: int | None,
    started: float,
    identity: str | None = None,
) -> None:
    """Logs the one access line of an HTTP request; ``status`` is None when the client left before
    an answer; ``started`` is its :func:`time.perf_counter` at arrival."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else "-"
    method = scope["method"]
    access_log.info(
        '%s - "%s %s HTTP/%s" %s %.1fms %s',
        address,
        method,
        route or "-",
        scope.get("http_version", "1.1"),
        "-" if status is None else status,
        duration_ms,
        request_id,
        extra={
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "identity": identity,
            "client": address,
        },
    )


def _request_id(record: logging.LogRecord) -> str | None:
    request_id: str | None = record.__dict__.get("request_id") or current_request_id.get()
    return request_id


class TextFormatter(DefaultFormatter):
    """uvicorn's ``LEVEL:    message`` lines; a record logged during a request whose message does not
    name the request's id gets it appended in brackets."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        request_id = _request_id(record)
        if request_id and request_id not in text:
            text = f"{text} [{request_id}]"
        return text

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601 UTC, milliseconds), ``level``,
    ``logger``, ``message``, then whichever of ``request_id`` and :data:`FIELDS` are known, and
    ``exc_info`` (the formatted traceback) for records with an exception."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = _request_id(record)
        if request_id:
            entry["request_id"] = request_id
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = redact(self.formatStack(record.stack_info))
        # Newlines in messages are escaped by JSON, so a record is always exactly one line.
        return orjson.dumps(entry, default=str).decode()


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """The logging configuration of a server process: uvicorn's loggers and the app's at ``level``
    (one of :data:`LEVELS`), as ``"json"`` lines or else text; access lines on stdout, everything
    else on stderr (as uvicorn does), other libraries' warnings through the same formatter."""
    number = LEVELS[level]
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if log_format == "json"
        else {"()": f"{__name__}.TextFormatter", "fmt": "%(levelprefix)s %(message)s", "use_colors": None}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn sets use_colors on formatters named "default" and "access" when asked to.
        "formatters": {"default": formatter, "access": dict(formatter)},
        "handlers": {
            "default": {
                "formatter": "default",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": number, "propagate": False},
            "uvicorn.error": {"level": number},
            "uvicorn.access": {"handlers": ["access"], "level": number, "propagate": False},
            "sync_server": {"handlers": ["default"], "level": number, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": number, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
