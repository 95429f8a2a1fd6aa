"""Server settings, read from ``SYNC_*`` environment variables.

The CLI turns its flags into these variables before it starts uvicorn, so every worker process (uvicorn
re-imports the app in each one) builds the same :class:`Settings` from its environment.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sync_server.hosts import ANY, default_allowed_hosts, parse_allowed_hosts

DEFAULT_DATA_DIR = ".sync-data"

MetricsAuth = Literal["auto", "always", "never"]
METRICS_AUTH_VALUES: tuple[MetricsAuth, ...] = ("auto", "always", "never")


@dataclass(frozen=True)
class Limits:
    """Configurable limits. Defaults are what a single small server should accept."""

    max_body_bytes: int = 128 * 1024
    """REST request bodies above this are refused (413) before they are read whole."""
    max_frame_bytes: int = 64 * 1024
    """Largest websocket message a client may send."""
    max_subscriptions: int = 1000
    """Documents one websocket connection may subscribe to."""
    max_commands_per_second: int = 200
    """Sustained websocket commands per second per connection (a burst of the same size is allowed)."""
    max_buffered_bytes: int = 1024 * 1024
    """Outgoing bytes a websocket connection may have waiting before it is closed as too slow."""
    ping_interval: float = 20.0
    """Seconds between server pings; a connection that does not answer within the same time is closed."""
    max_request_line_bytes: int = 8 * 1024
    """Longest HTTP request target (the URL of the request line); longer ones are answered 414 and closed."""
    max_header_bytes: int = 64 * 1024
    """Most bytes of an HTTP request head (request line and headers); more are answered 431 and closed."""
    header_timeout: float = 10.0
    """Seconds from a connection's start (or a keep-alive request's first byte) to its complete headers."""
    body_timeout: float = 30.0
    """Seconds a request body may go without a byte arriving before the connection is closed."""
    keep_alive_timeout: int = 5
    """Seconds an idle keep-alive connection is kept after a response."""
    init_timeout: float = 30.0
    """Seconds a Twilsock connection may take to send its ``init`` (its token) before it is closed."""
    drain_timeout: int = 10
    """Whole seconds a stopping server (SIGTERM) gives requests in flight to finish before cancelling them."""


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are delivered (see webhooks/ and README "Webhooks")."""

    enabled: bool = True
    """Whether this process delivers (``SYNC_WEBHOOKS``); writes fill the outbox regardless."""
    timeout: float = 15.0
    """Seconds one attempt may take, connection and answer (Twilio's limit)."""
    first_wait: float = 1.0
    """Seconds before the first retry; each further wait doubles, with jitter."""
    max_wait: float = 30.0
    """The cap on the wait between two attempts."""
    retry_for: float = 3600.0
    """Seconds after the change that a failing webhook is retried; then it is a dead letter."""
    concurrency: int = 16
    """Requests in flight to one receiver (scheme, host and port), per server process."""
    lease: float = 15.0
    """Seconds a process's hold on its partitions outlives it: a dead process's webhooks are taken
    over within about this plus a third."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        def seconds(name: str, default: float) -> float:
            value = float(env.get(name) or default)
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
            return value

        return cls(
            enabled=env.get("SYNC_WEBHOOKS", "on").strip().lower() not in ("off", "0", "false", "no"),
            timeout=seconds("SYNC_WEBHOOK_TIMEOUT", cls.timeout),
            first_wait=seconds("SYNC_WEBHOOK_FIRST_WAIT", cls.first_wait),
            max_wait=seconds("SYNC_WEBHOOK_MAX_WAIT", cls.max_wait),
            retry_for=seconds("SYNC_WEBHOOK_RETRY_FOR", cls.retry_for),
            concurrency=max(1, int(env.get("SYNC_WEBHOOK_CONCURRENCY") or cls.concurrency)),
            lease=seconds("SYNC_WEBHOOK_LEASE", cls.lease),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str
    data_dir: Path
    account_sid: str
    auth_token: str
    api_key_sid: str
    api_key_secret: str
    public_url: str | None = None
    expiry_interval: float = 0.2
    """Seconds between sweeps for expired documents (the bound on how late a ``removed`` event may be)."""
    limits: Limits = Limits()
    redis_timeout: float | None = 5.0
    """Seconds a store command may wait for Redis's reply before the request fails with 503 (a hung
    Redis must not hang clients); ``SYNC_REDIS_TIMEOUT``, 0 for no limit."""
    allowed_hosts: tuple[str, ...] = (ANY,)
    """Host header patterns answered (see hosts.py). :meth:`from_env` defaults to the listening
    address and localhost; settings built in code (tests, embedding) allow any Host unless told."""
    metrics_auth: MetricsAuth = "auto"
    """Whether ``/metrics`` needs the account's Basic credentials (``SYNC_METRICS_AUTH``): ``auto``
    when the server listens beyond loopback (:attr:`host`), ``always`` or ``never``."""
    host: str = "127.0.0.1"
    """The listening address (``SYNC_HOST``, set by the CLI)."""
    webhooks: WebhookSettings = WebhookSettings()

    @property
    def metrics_need_credentials(self) -> bool:
        if self.metrics_auth == "auto":
            return not is_loopback(self.host)
        return self.metrics_auth == "always"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``SYNC_*`` variables. Credentials must already be resolved (see cli.py)."""
        env = os.environ if env is None else env
        limits = Limits(
            max_body_bytes=int(env.get("SYNC_MAX_BODY_BYTES", Limits.max_body_bytes)),
            max_frame_bytes=int(env.get("SYNC_MAX_FRAME_BYTES", Limits.max_frame_bytes)),
            max_subscriptions=int(env.get("SYNC_MAX_SUBSCRIPTIONS", Limits.max_subscriptions)),
            max_commands_per_second=int(
                env.get("SYNC_MAX_COMMANDS_PER_SECOND", Limits.max_commands_per_second)
            ),
            max_buffered_bytes=int(env.get("SYNC_MAX_BUFFERED_BYTES", Limits.max_buffered_bytes)),
            ping_interval=float(env.get("SYNC_PING_INTERVAL", Limits.ping_interval)),
            max_request_line_bytes=int(env.get("SYNC_MAX_REQUEST_LINE_BYTES", Limits.max_request_line_bytes)),
            max_header_bytes=int(env.get("SYNC_MAX_HEADER_BYTES", Limits.max_header_bytes)),
            header_timeout=float(env.get("SYNC_HEADER_TIMEOUT", Limits.header_timeout)),
            body_timeout=float(env.get("SYNC_BODY_TIMEOUT", Limits.body_timeout)),
            keep_alive_timeout=int(env.get("SYNC_KEEP_ALIVE_TIMEOUT", Limits.keep_alive_timeout)),
            init_timeout=float(env.get("SYNC_INIT_TIMEOUT", Limits.init_timeout)),
            drain_timeout=int(env.get("SYNC_DRAIN_TIMEOUT", Limits.drain_timeout)),
        )
        public_url = env.get("SYNC_PUBLIC_URL") or None
        allowed_hosts = parse_allowed_hosts(env.get("SYNC_ALLOWED_HOSTS", "")) or default_allowed_hosts(
            env.get("SYNC_HOST") or "127.0.0.1", int(env.get("SYNC_PORT") or 8080), public_url
        )
        return cls(
            redis_url=env.get("SYNC_REDIS_URL", "redis://127.0.0.1:6379/0"),
            data_dir=Path(env.get("SYNC_DATA_DIR", DEFAULT_DATA_DIR)),
            account_sid=env["SYNC_ACCOUNT_SID"],
            auth_token=env["SYNC_AUTH_TOKEN"],
            api_key_sid=env.get("SYNC_API_KEY_SID", ""),
            api_key_secret=env.get("SYNC_API_KEY_SECRET", ""),
            public_url=public_url.rstrip("/") if public_url else None,
            expiry_interval=float(env.get("SYNC_EXPIRY_INTERVAL", "0.2")),
            limits=limits,
            redis_timeout=float(env.get("SYNC_REDIS_TIMEOUT", "5")) or None,
            allowed_hosts=allowed_hosts,
            metrics_auth=_metrics_auth(env.get("SYNC_METRICS_AUTH") or "auto"),
            host=env.get("SYNC_HOST") or "127.0.0.1",
            webhooks=WebhookSettings.from_env(env),
        )


def _metrics_auth(text: str) -> MetricsAuth:
    value = text.strip().lower()
    if value not in METRICS_AUTH_VALUES:
        raise ValueError(f"SYNC_METRICS_AUTH must be one of {', '.join(METRICS_AUTH_VALUES)}, not {text!r}")
    return value


def is_loopback(host: str) -> bool:
    """Whether a listening address is loopback only, without resolving names (``0.0.0.0``, ``::``
    and any name but ``localhost`` are not: they may be reached from elsewhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
