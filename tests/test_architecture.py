"""The shape of the code, pinned: one door to the store, Redis behind the store and the hub, and HTTP
out of the server (webhooks) in one module.

Read from the sources' import statements (an import inside a function counts too), so a shortcut from
an adapter to the store, or a Redis call outside the two modules that own Redis, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sync_server"
# The composition root builds the concrete store and hub; the hub owns pub/sub (its connection module
# shares the store's RESP encoder and connect timeout); the document service is the one door every
# adapter goes through. The CLI's commands are entry points that build what they need, like the
# composition root.
MAY_IMPORT_THE_STORE = {"app.py", "documents.py", "hub.py", "hub_connection.py", "cli.py", "cli_webhooks.py"}
MAY_IMPORT_REDIS = {"app.py", "hub.py"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules() -> list[tuple[str, set[str]]]:
    return [
        (str(path.relative_to(PACKAGE)), imports(path))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "store"
    ]


def test_only_the_document_service_and_the_composition_root_use_the_store() -> None:
    offenders = {
        name: sorted(m for m in found if m.startswith("sync_server.store"))
        for name, found in modules()
        if name not in MAY_IMPORT_THE_STORE and any(m.startswith("sync_server.store") for m in found)
    }
    assert offenders == {}


def test_only_the_store_and_the_hub_talk_to_redis() -> None:
    offenders = {
        name: sorted(m for m in found if m == "redis" or m.startswith("redis."))
        for name, found in modules()
        if name not in MAY_IMPORT_REDIS and any(m == "redis" or m.startswith("redis.") for m in found)
    }
    assert offenders == {}


def test_every_adapter_goes_through_the_document_service() -> None:
    """REST's handlers and the session core call the document service; both socket protocols are
    sessions of that core."""
    assert "sync_server.documents" in imports(PACKAGE / "rest/handlers.py")
    assert "sync_server.documents" in imports(PACKAGE / "gateway/session.py")
    for adapter in ("gateway/native.py", "gateway/twilsock.py"):
        assert "sync_server.gateway.session" in imports(PACKAGE / adapter), adapter


def test_only_the_transport_knows_the_websocket_server() -> None:
    """The session core and the protocol adapters are driven by callbacks and write through an
    outbox; uvicorn and the websockets library are the transport's business (gateway/uvicorn_ws.py)."""
    offenders = {
        name: sorted(m for m in found if m.split(".")[0] in ("uvicorn", "websockets"))
        for name, found in modules()
        if name.startswith("gateway/")
        and name != "gateway/uvicorn_ws.py"
        and any(m.split(".")[0] in ("uvicorn", "websockets") for m in found)
    }
    assert offenders == {}


def test_only_the_webhook_sender_makes_http_requests() -> None:
    """The webhooks package reaches Redis only through its outbox contract (the rules above hold for
    it too), and the network only through webhooks/sender.py."""
    offenders = {
        name: sorted(m for m in found if m == "httpx" or m.startswith("httpx."))
        for name, found in modules()
        if name != "webhooks/sender.py" and any(m == "httpx" or m.startswith("httpx.") for m in found)
    }
    assert offenders == {}
    assert "httpx" in imports(PACKAGE / "webhooks/sender.py")
