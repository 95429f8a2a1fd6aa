"""The ``sync-server`` command: ``serve`` (the default), ``token``, ``credentials``, ``migrate`` and
``webhooks`` (cli_webhooks.py).

``serve`` resolves the credentials, starts the embedded Redis unless a Redis URL is given (the bundled
Valkey unless ``--redis-server`` names another, checked against the server that wrote its data), exports
everything as ``SYNC_*`` variables (uvicorn builds the app afresh in every worker, each reading
:meth:`Settings.from_env`) and runs uvicorn. Every flag has a ``SYNC_*`` variable as its default.

Secrets are printed to stdout only when they come from the data directory (the operator has no other way
to learn generated ones), never when they come from the environment, and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from sync_server.config import DEFAULT_DATA_DIR, METRICS_AUTH_VALUES, Limits, Settings
from sync_server.credentials import CREDENTIALS_FILE, Credentials, CredentialsError, resolve_credentials
from sync_server.embedded import PERSISTENT_ARGS, RedisNotFoundError, RedisProcess, RedisStartError
from sync_server.embedded_record import ServerInfo, embedded_server, start_recorded
from sync_server.errors import StoreFull, SyncError, UnavailableError
from sync_server.hosts import ANY, invalid_patterns, parse_allowed_hosts
from sync_server.store.migrate import migrate_url
from sync_server.tokens import MAX_TOKEN_LIFETIME, mint_access_token

if TYPE_CHECKING:
    import asyncio

__all__ = ["build_parser", "main"]

PROG = "sync-server"
COMMANDS = ("serve", "token", "credentials", "migrate", "webhooks")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
APP_FACTORY = "sync_server.app:create_app"
DEMO_TOKEN_TTL = 3600
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess mode (the name metrics.py reads; not imported here, so that
the supervisor never loads prometheus-client before the variable is set)."""
"""Seconds the token of the banner's demo link is valid."""


class CliError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sync-server`` and ``python -m sync_server``; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(os.environ).parse_args(_default_to_serve(arguments))
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": serve,
        "token": print_token,
        "credentials": print_credentials,
        "migrate": run_migration,
        "webhooks": _run_webhooks,
    }
    try:
        return handlers[args.command](args)
    except (CliError, CredentialsError, RedisNotFoundError, RedisStartError, SyncError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _default_to_serve(arguments: list[str]) -> list[str]:
    if arguments and arguments[0] in (*COMMANDS, "-h", "--help"):
        return arguments
    return ["serve", *arguments]


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; ``env`` supplies the ``SYNC_*`` defaults."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Self-hostable realtime document sync server, compatible with Twilio Sync Documents.",
        epilog=f"Without a command, {PROG} runs `serve`; see `{PROG} serve --help` for its flags.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands.add_parser("serve", help="run the server (the default command)"), env)
    token = commands.add_parser("token", help="print an access token for a client SDK")
    token.add_argument("--identity", required=True, help="the identity the token is issued to")
    token.add_argument("--service", default="default", help="the Sync service SID (default: %(default)s)")
    token.add_argument(
        "--ttl", type=_token_ttl, default=3600, help="seconds, at most 86400 (default: %(default)s)"
    )
    _add_data_dir(token, env)
    credentials = commands.add_parser("credentials", help="print the credentials the server accepts")
    credentials.add_argument("--json", action="store_true", help="print JSON instead of SYNC_* assignments")
    _add_data_dir(credentials, env)
    migrate = commands.add_parser(
        "migrate", help="re-key a store of the previous layout for this version (idempotent, resumable)"
    )
    migrate.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="stop after this many documents (run again to go on)",
    )
    _add_store(migrate, env)
    from sync_server import cli_webhooks

    cli_webhooks.add_parser(commands, env, add_store=_add_store)
    return parser


def _add_serve(serve: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    # String defaults go through `type` like typed values, so a bad SYNC_PORT is reported like a bad --port.
    serve.add_argument("--host", default=env.get("SYNC_HOST") or "127.0.0.1", help="(env SYNC_HOST)")
    serve.add_argument("--port", type=_port, default=env.get("SYNC_PORT") or "8080", help="(env SYNC_PORT)")
    serve.add_argument(
        "--redis-url",
        type=_redis_url,
        default=env.get("SYNC_REDIS_URL") or None,
        help="redis://, rediss:// or unix:// URL (env SYNC_REDIS_URL); without one, an embedded Redis "
        "persists to <data-dir>/redis",
    )
    serve.add_argument(
        "--redis-server",
        default=env.get("SYNC_REDIS_SERVER") or None,
        help="the server binary of the embedded Redis, a name on PATH or a path (env SYNC_REDIS_SERVER, "
        "default: the bundled valkey-server); ignored with --redis-url",
    )
    _add_data_dir(serve, env)
    serve.add_argument(
        "--public-url",
        default=env.get("SYNC_PUBLIC_URL") or None,
        help="the URL clients reach this server at, for links in responses (env SYNC_PUBLIC_URL)",
    )
    serve.add_argument(
        "--allowed-hosts",
        type=_allowed_hosts,
        default=env.get("SYNC_ALLOWED_HOSTS") or None,
        help="comma-separated Host header patterns to answer: host, host:port, *.domain, or * (any, "
        "needs --public-url); default: the listening address and localhost with the port, and the "
        "public URL's host (env SYNC_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--workers", type=_positive_int, default=env.get("SYNC_WORKERS") or "1", help="(env SYNC_WORKERS)"
    )
    serve.add_argument(
        "--metrics-auth",
        type=str.lower,
        choices=METRICS_AUTH_VALUES,
        default=env.get("SYNC_METRICS_AUTH") or "auto",
        help="whether /metrics needs the account's credentials: auto (when listening beyond loopback), "
        "always or never (env SYNC_METRICS_AUTH, default: %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=env.get("SYNC_LOG_LEVEL") or "info",
        help="(env SYNC_LOG_LEVEL, default: %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=env.get("SYNC_LOG_FORMAT") or "text",
        help="text lines, or one JSON object per line (env SYNC_LOG_FORMAT, default: %(default)s)",
    )


def _add_store(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The store a maintenance command works on: ``--redis-url``, else the embedded Redis of
    ``--data-dir`` (started with ``--redis-server`` when no server runs)."""
    parser.add_argument(
        "--redis-url",
        type=_redis_url,
        default=env.get("SYNC_REDIS_URL") or None,
        help="the store (env SYNC_REDIS_URL); without one, the embedded Redis of <data-dir>",
    )
    parser.add_argument(
        "--redis-server",
        default=env.get("SYNC_REDIS_SERVER") or None,
        help="the embedded Redis's binary (as for serve), when no server runs; ignored with --redis-url",
    )
    _add_data_dir(parser, env)


def _add_data_dir(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=env.get("SYNC_DATA_DIR") or DEFAULT_DATA_DIR,
        help="holds credentials.json and the embedded Redis (env SYNC_DATA_DIR, default: %(default)s)",
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _token_ttl(text: str) -> int:
    ttl = _positive_int(text)
    if ttl > MAX_TOKEN_LIFETIME:
        raise argparse.ArgumentTypeError(f"at most {MAX_TOKEN_LIFETIME} seconds (24 h, as Twilio): {text!r}")
    return ttl


def _allowed_hosts(text: str) -> str:
    patterns = parse_allowed_hosts(text)
    bad = invalid_patterns(patterns)
    if bad:
        raise argparse.ArgumentTypeError(f"not a host[:port] pattern: {bad[0]!r}")
    return ",".join(patterns)


def _redis_url(text: str) -> str:
    if not text.startswith(REDIS_SCHEMES):
        raise argparse.ArgumentTypeError(f"expected a {', '.join(REDIS_SCHEMES)} URL, got {text!r}")
    return text


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT, then stop the embedded Redis (if any) after uvicorn."""
    data_dir: Path = args.data_dir.absolute()
    if args.allowed_hosts and ANY in args.allowed_hosts.split(",") and not args.public_url:
        # Links would follow whatever Host a client sends (see hosts.py).
        raise CliError("--allowed-hosts '*' needs --public-url (SYNC_PUBLIC_URL), the base of links")
    credentials, from_file = resolve_credentials(data_dir, os.environ)
    _check_port_free(args.host, args.port)
    # Checked before anything starts: a server that may not read the data must not touch it.
    embedded = None if args.redis_url else embedded_server(data_dir / "redis", args.redis_server)
    if from_file:
        _say(args, _banner(credentials, data_dir, _base_url(args)))
    _say(args, _demo_link(credentials, args))
    if embedded is not None:
        _say(args, _embedded_line(embedded, data_dir / "redis"))
    # uvicorn re-raises SIGTERM once it has shut down; with the default handler that would end the process
    # before the embedded Redis is stopped, so turn it into SystemExit, which unwinds the ExitStack.
    signal.signal(signal.SIGTERM, _exit_quietly)
    with contextlib.ExitStack() as stack:
        redis_url: str = args.redis_url
        if embedded is not None:
            redis = RedisProcess(data_dir / "redis", args=PERSISTENT_ARGS, binary=embedded.path)
            redis_url = stack.push(start_recorded(redis, embedded)).url
            # The embedded Redis is this server's alone: its data is migrated on the spot.
            report = asyncio.run(migrate_url(redis_url))
            if report.migrated:
                print(f"{PROG}: migrated {report.migrated} documents to the partitioned key layout")
        os.environ.update(_server_env(credentials, redis_url, data_dir, args))
        if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
            # Before the workers start: each keeps its metrics in files there, and a scrape of any
            # merges them all (metrics.py). Per run, so nothing of an earlier run is counted again.
            metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sync-metrics-"))
            os.environ[MULTIPROC_ENV] = metrics_dir
            stack.callback(os.environ.pop, MULTIPROC_ENV, None)
        _run_uvicorn(args)
    return 0


def run_migration(args: argparse.Namespace) -> int:
    """``sync-server migrate``: see store/migrate.py. Exit status 0 when complete, 3 when ``--limit``
    stopped it early (run it again to go on)."""
    with contextlib.ExitStack() as stack:
        redis_url: str | None = args.redis_url
        if redis_url is None:
            data_dir: Path = args.data_dir.absolute()
            embedded = embedded_server(data_dir / "redis", args.redis_server)
            redis = RedisProcess(data_dir / "redis", args=PERSISTENT_ARGS, binary=embedded.path)
            redis_url = stack.push(start_recorded(redis, embedded)).url
        try:
            report = asyncio.run(migrate_url(redis_url, args.limit))
        except (UnavailableError, StoreFull) as exc:
            raise CliError(f"migrate: Redis at {_address(redis_url)}: {exc}") from None
    state = "complete" if report.complete else "stopped by --limit; run it again to go on"
    print(
        f"{PROG} migrate: {report.services} services, {report.migrated} documents migrated, "
        f"{report.skipped} already migrated: {state}"
    )
    return 0 if report.complete else 3


def _address(redis_url: str) -> str:
    """Where ``redis_url`` points, without its credentials (a single Redis or any cluster node)."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def _run_webhooks(args: argparse.Namespace) -> int:
    from sync_server import cli_webhooks

    try:
        return cli_webhooks.run(args)
    except cli_webhooks.UsageError as exc:
        raise CliError(str(exc)) from None


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting Redis, with a readable message, if uvicorn could not bind the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CliError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            hint = (
                " (another server is running there; choose one with --port)"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None


def _base_url(args: argparse.Namespace) -> str:
    if args.public_url:
        return str(args.public_url).rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    return f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"


def _say(args: argparse.Namespace, text: str) -> None:
    """Prints startup lines on stdout; with ``--log-format json`` each one is a JSON log record, so
    that every line of the output stays one object (then redacted like every log line)."""
    if args.log_format != "json":
        print(text, flush=True)
        return
    from sync_server.logs import JsonFormatter

    formatter = JsonFormatter()
    for line in text.splitlines():
        record = logging.LogRecord("sync_server.cli", logging.INFO, __file__, 0, line, None, None)
        print(formatter.format(record), flush=True)


def _banner(credentials: Credentials, data_dir: Path, base_url: str) -> str:
    account_from_env = bool(os.environ.get("SYNC_ACCOUNT_SID"))
    key_from_env = bool(os.environ.get("SYNC_API_KEY_SID"))
    token = "(from SYNC_AUTH_TOKEN)" if account_from_env else credentials.auth_token
    secret = "(from SYNC_API_KEY_SECRET)" if key_from_env else credentials.api_key_secret
    auth = (
        '"$SYNC_ACCOUNT_SID:$SYNC_AUTH_TOKEN"'
        if account_from_env
        else f"{credentials.account_sid}:{credentials.auth_token}"
    )
    lines = [
        f"Credentials from {data_dir / CREDENTIALS_FILE} (set SYNC_ACCOUNT_SID/SYNC_AUTH_TOKEN to override):",
        f"  Account SID     {credentials.account_sid}",
        f"  Auth token      {token}",
        f"  API key SID     {credentials.api_key_sid}",
        f"  API key secret  {secret}",
        f"Try: curl -u {auth} {base_url}/v1/Services/default/Documents",
    ]
    return "\n".join(lines)


def _demo_link(credentials: Credentials, args: argparse.Namespace) -> str:
    """One click to the demo, on a developer's machine only: a token printed by a server reachable from
    elsewhere would end up in shared terminals and logs, so beyond loopback only the way to mint one."""
    demo = f"{_base_url(args)}/demo"
    if not _is_loopback(args.host) or not credentials.api_key_secret:
        return f"Demo: {demo}?token=<token>, with a token from `{PROG} token --identity <name>`"
    identity = f"demo-{secrets.token_hex(4)}"
    token = mint_access_token(
        credentials.account_sid,
        credentials.api_key_sid,
        credentials.api_key_secret,
        identity,
        ttl=DEMO_TOKEN_TTL,
    )
    return f"Demo (as {identity}, for {DEMO_TOKEN_TTL // 3600} h): {demo}?token={token}"


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``0.0.0.0`` and ``::`` are not)."""
    try:
        addresses = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(address[4][0]).is_loopback for address in addresses)


def _embedded_line(server: ServerInfo, directory: Path) -> str:
    return (
        f"Embedded Redis server: {server}, data in {directory} "
        "(choose another with --redis-server or SYNC_REDIS_SERVER)"
    )


def _server_env(
    credentials: Credentials, redis_url: str, data_dir: Path, args: argparse.Namespace
) -> dict[str, str]:
    # The listening address, so that the app's default allowed hosts match it (config.py).
    env = {
        "SYNC_HOST": str(args.host),
        "SYNC_PORT": str(args.port),
        "SYNC_REDIS_URL": redis_url,
        "SYNC_DATA_DIR": str(data_dir),
        "SYNC_ACCOUNT_SID": credentials.account_sid,
        "SYNC_AUTH_TOKEN": credentials.auth_token,
        "SYNC_API_KEY_SID": credentials.api_key_sid,
        "SYNC_API_KEY_SECRET": credentials.api_key_secret,
        "SYNC_METRICS_AUTH": str(args.metrics_auth),
    }
    if args.public_url:
        env["SYNC_PUBLIC_URL"] = str(args.public_url)
    if args.allowed_hosts:
        env["SYNC_ALLOWED_HOSTS"] = str(args.allowed_hosts)
    return env


def _run_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn  # here, so that `token` and `credentials` start fast

    from sync_server import workers
    from sync_server.gateway import WEBSOCKET_PROTOCOL
    from sync_server.logs import log_config

    limits = Settings.from_env().limits
    _raise_open_files_limit(verbose=args.log_level in ("debug", "trace"))
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop" if _importable("uvloop") else "auto",
        # httptools with bounded request heads and header/body deadlines (http_protocol.py); h11, the
        # fallback, bounds heads itself (h11_max_incomplete_event_size) but has no such deadlines.
        http=_http_protocol(limits) if _importable("httptools") else "h11",
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_timeout,
        # Websockets served by a protocol object each, with a direct write path (gateway/uvicorn_ws.py).
        ws=WEBSOCKET_PROTOCOL,
        ws_max_size=limits.max_frame_bytes,
        ws_ping_interval=limits.ping_interval,
        ws_ping_timeout=limits.ping_interval,
        # Frames are encoded once and written as they are to every subscriber: no compression.
        ws_per_message_deflate=False,
        lifespan="on",
        log_level=args.log_level,
        # Applied by uvicorn in the supervisor and in every worker. The app writes the access lines
        # (with request id, route template and duration, logs.py), so uvicorn's are off.
        log_config=log_config(args.log_format, args.log_level),
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # SIGTERM: requests in flight get this long to finish (websockets are closed with 1001 at
        # once, see gateway/uvicorn_ws.py), then they are cancelled and the process exits.
        timeout_graceful_shutdown=limits.drain_timeout,
    )
    workers.run(config)


def _http_protocol(limits: Limits) -> type[asyncio.Protocol]:
    from sync_server.http_protocol import LimitedHttpToolsProtocol

    # uvicorn only calls what it is given; a partial (unlike a class made here) also pickles by
    # reference into the worker processes of --workers.
    return cast("type[asyncio.Protocol]", functools.partial(LimitedHttpToolsProtocol, limits=limits))


def _raise_open_files_limit(*, verbose: bool) -> None:
    """Raises the soft descriptor limit to the hard one: every connection holds a descriptor, and a
    soft limit of 1,024 (a common default) is reached by a few idle clients. Workers inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # e.g. an unlimited hard limit, which Linux refuses for files
        return
    if verbose:
        print(f"{PROG}: open files limit raised from {soft} to {hard}", file=sys.stderr, flush=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def print_token(args: argparse.Namespace) -> int:
    """Print one access token, and nothing else, on stdout."""
    credentials, _ = resolve_credentials(args.data_dir.absolute(), os.environ)
    token = mint_access_token(
        credentials.account_sid,
        credentials.api_key_sid,
        credentials.api_key_secret,
        args.identity,
        service_sid=args.service,
        ttl=args.ttl,
    )
    print(token)
    return 0


def print_credentials(args: argparse.Namespace) -> int:
    """Print the resolved credentials as ``SYNC_*=value`` lines (``eval``-able) or as JSON."""
    credentials, _ = resolve_credentials(args.data_dir.absolute(), os.environ)
    values = {
        "SYNC_ACCOUNT_SID": credentials.account_sid,
        "SYNC_AUTH_TOKEN": credentials.auth_token,
        "SYNC_API_KEY_SID": credentials.api_key_sid,
        "SYNC_API_KEY_SECRET": credentials.api_key_secret,
    }
    if args.json:
        import json

        print(json.dumps({name.removeprefix("SYNC_").lower(): value for name, value in values.items()}))
    else:
        print("\n".join(f"{name}={shlex.quote(value)}" for name, value in values.items()))
    return 0
