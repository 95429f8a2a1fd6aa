"""``sync-server webhooks dead-letters [list|replay|purge]``: the dead letters of the webhook outbox.

``list`` prints one line per dead letter (``--json``: one JSON array), ``replay`` sends them again (as
new outbox entries, keeping their idempotency tokens), ``purge`` deletes them; ``--service`` and
``--token`` (repeatable) choose which; ``purge`` needs one of them or ``--all``. The store is the one
of ``--redis-url`` (``SYNC_REDIS_URL``), else the embedded Redis of ``--data-dir``: the running
server's, through its socket, or started for the command when no server runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from sync_server.embedded import PERSISTENT_ARGS, SOCKET_NAME, RedisProcess
from sync_server.embedded_record import embedded_server, start_recorded

ACTIONS = ("list", "replay", "purge")


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    env: Mapping[str, str],
    *,
    add_store: Callable[[argparse.ArgumentParser, Mapping[str, str]], None],
) -> None:
    webhooks = commands.add_parser("webhooks", help="the webhook outbox: list, replay or purge dead letters")
    what = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    letters = what.add_parser(
        "dead-letters", help="webhooks given up on after their retries: list (default), replay or purge"
    )
    letters.add_argument("action", nargs="?", choices=ACTIONS, default="list")
    letters.add_argument("--service", help="only this service's (a service SID)")
    letters.add_argument(
        "--token", action="append", default=[], help="only the one with this idempotency token (repeatable)"
    )
    letters.add_argument("--all", action="store_true", help="purge: every dead letter")
    letters.add_argument("--json", action="store_true", help="list: one JSON array")
    add_store(letters, env)


class UsageError(Exception):
    """A refusal reported like a CLI error (exit status 1)."""


def run(args: argparse.Namespace) -> int:
    if args.action == "purge" and not (args.service or args.token or args.all):
        raise UsageError("purge needs --service, --token or --all")
    with contextlib.ExitStack() as stack:
        url = args.redis_url or _embedded_url(stack, args.data_dir.absolute(), args.redis_server)
        return asyncio.run(_dead_letters(url, args))


async def _dead_letters(url: str, args: argparse.Namespace) -> int:
    # Here, so that the parser (built for every command) loads none of this.
    from sync_server.store.webhook_outbox import open_outbox
    from sync_server.webhooks import dead_letters

    async with open_outbox(url, "sync-server-cli") as outbox:
        letters = await dead_letters.collect(outbox, service_sid=args.service, tokens=args.token)
        if args.action == "list":
            if args.json:
                print(json.dumps([letter.as_json() for letter in letters], indent=2))
            else:
                for letter in letters:
                    print(letter.line())
                print(f"{len(letters)} dead letters", file=sys.stderr)
        elif args.action == "replay":
            print(f"replayed {await dead_letters.replay(outbox, letters)} dead letters")
        else:
            print(f"purged {await dead_letters.purge(outbox, letters)} dead letters")
    return 0


def _embedded_url(stack: contextlib.ExitStack, data_dir: Path, binary: str | None) -> str:
    """The running server's embedded Redis (its socket answers), else one started for the command."""
    path = data_dir / "redis" / SOCKET_NAME
    if _answers(path):
        return f"unix://{path}"
    embedded = embedded_server(data_dir / "redis", binary)
    redis = RedisProcess(data_dir / "redis", args=PERSISTENT_ARGS, binary=embedded.path)
    return stack.push(start_recorded(redis, embedded)).url


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(str(path))
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
