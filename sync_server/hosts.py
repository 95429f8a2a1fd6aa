"""Which ``Host`` headers the server answers, so that links never point where a client says.

Without a public URL, the ``url``, ``links`` and ``meta.*_page_url`` fields are built from the
request's ``Host``; twilio-python follows ``next_page_url`` with its Basic credentials, so a forged
``Host: evil.example`` would send them to evil.example. Every HTTP request and websocket handshake
(but ``/healthz``, which holds no links, so that probes may use any address) is therefore refused
unless its Host matches the allowed hosts (``SYNC_ALLOWED_HOSTS`` / ``--allowed-hosts``):

- ``host`` matches that host on any port, ``host:port`` only on that port;
- ``*.example.com`` matches every subdomain of example.com (not example.com itself);
- ``*`` matches anything: for a server behind a proxy, which must then set a public URL, so
  that links never follow the Host at all (the CLI refuses ``*`` without one).

The default is the listening address with the listening port (unless it is a wildcard such as
``0.0.0.0``), ``localhost``, ``127.0.0.1`` and ``[::1]`` on any port, and the public URL's host.
The same rule holds with a public URL: a server should not answer for names it was not given.
A request without a Host (HTTP/1.0) is answered: its links use the socket's own address.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import orjson
from starlette.types import Receive, Scope, Send

from sync_server import errors

__all__ = ["HostPolicy", "default_allowed_hosts", "invalid_patterns", "parse_allowed_hosts", "refuse"]

ANY = "*"
LENIENT_PATHS = frozenset({"/healthz"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~[]:%")


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """``SYNC_ALLOWED_HOSTS``: comma-separated patterns, normalised to lowercase; blanks dropped."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def invalid_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns that are neither ``*`` nor ``[*.]host[:port]`` (for the CLI to report)."""
    return [pattern for pattern in patterns if not _valid_pattern(pattern)]


def _valid_pattern(pattern: str) -> bool:
    if pattern == ANY:
        return True
    body = pattern.removeprefix("*.")
    parts = _split(body)
    return parts is not None and bool(parts[0]) and _HOST_CHARS.issuperset(body)


def default_allowed_hosts(bind_host: str, port: int, public_url: str | None = None) -> tuple[str, ...]:
    """The listening address with the listening port, the loopback names on any port, and the
    public URL's host.

    Loopback on any port, because port forwarding (``docker run -p 9000:8080``, ``ssh -L``,
    ``kubectl port-forward``) changes the port a client sees, and a link to a loopback name can
    only lead back to the client's own machine, never to someone who forged it.
    """
    allowed: list[str] = []
    bind = bind_host.strip().lower()
    if bind in _WILDCARD_BINDS:
        bind = ""
    elif ":" in bind and not bind.startswith("["):
        bind = f"[{bind}]"  # an IPv6 literal, as a Host header spells it
    if bind and bind not in _LOOPBACK:
        allowed.append(f"{bind}:{port}")
    allowed += _LOOPBACK
    if public_url:
        netloc = urlsplit(public_url).netloc.rpartition("@")[2].lower()
        if netloc and netloc not in allowed:
            allowed.append(netloc)
    return tuple(allowed)


def _split(value: str) -> tuple[str, str | None] | None:
    """``host[:port]`` into host and port (None when absent); None when it is not shaped so."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return host.rstrip("."), port


class HostPolicy:
    """Decides whether a ``Host`` header is allowed (see the module docstring for the patterns)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.any = ANY in self.patterns
        # The exact header values allowed: the common case is one set lookup per request.
        self._exact: set[str] = set()
        self._hosts: set[str] = set()
        self._suffixes: list[tuple[str, str | None]] = []
        for pattern in self.patterns:
            parts = _split(pattern.removeprefix("*."))
            if pattern == ANY or parts is None:
                continue
            host, port = parts
            if pattern.startswith("*."):
                self._suffixes.append(("." + host, port))
            elif port is None:
                self._hosts.add(host)
                self._exact.add(host)
            else:
                self._exact.add(f"{host}:{port}")

    def allows(self, host_header: str | None) -> bool:
        if self.any or host_header is None or host_header in self._exact:
            return True
        value = host_header.strip().lower()
        if not value or not _HOST_CHARS.issuperset(value):
            return False
        if value in self._exact:
            return True
        parts = _split(value)
        if parts is None:
            return False
        host, port = parts
        if host in self._hosts or (port is not None and f"{host}:{port}" in self._exact):
            return True
        return any(
            host.endswith(suffix) and (want is None or want == port) for suffix, want in self._suffixes
        )

    def allows_scope(self, scope: Scope) -> bool:
        """Whether an HTTP or websocket scope may be served (``/healthz`` always may)."""
        if scope["path"] in LENIENT_PATHS:
            return True
        return self.allows(_host_header(scope["headers"]))


def _host_header(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"host":
            return value.decode("latin-1")
    return None


def refusal() -> errors.HostNotAllowed:
    return errors.HostNotAllowed(
        "The Host header names a host this server does not serve; "
        "configure SYNC_ALLOWED_HOSTS (--allowed-hosts) or SYNC_PUBLIC_URL (--public-url)"
    )


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 400 in Twilio's error format: as an HTTP response, or as the refused handshake of a
    websocket (a close before accepting when the server cannot send a response body: 403)."""
    error = refusal()
    body = orjson.dumps(error.to_dict())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
