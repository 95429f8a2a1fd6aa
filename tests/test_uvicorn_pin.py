"""uvicorn is pinned to the releases whose internals the server relies on; any other fails here, loudly.

``http_protocol.py`` subclasses uvicorn's httptools protocol and ``workers.py`` its worker supervisor;
``gateway/uvicorn_ws.py`` is a websocket protocol of its own that uvicorn's HTTP protocols hand an
upgraded connection to, and that reads uvicorn's config and server state. They override methods and
read attributes that are not uvicorn's public API, so a release may rename them without notice. This
pins the version range (``TESTED_UVICORN``, and pyproject.toml's requirement) and checks by
introspection that what they rely on is still there, naming whatever is missing.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import Server, ServerState
from uvicorn.supervisors.multiprocess import Multiprocess

from sync_server.gateway.uvicorn_ws import TESTED_UVICORN
from tests.support.processes import REPO_ROOT

# How an HTTP protocol hands an upgrade to the websocket protocol class (gateway/uvicorn_ws.py).
UPGRADE_SOURCE = (
    "self.ws_protocol_class(",
    "config=self.config",
    "server_state=self.server_state",
    "app_state=self.app_state",
    "protocol.connection_made(self.transport)",
    "protocol.data_received(",
    "self.transport.set_protocol(protocol)",
)
# The server's shutdown closes every connection, then waits for the tasks connections started.
SHUTDOWN_SOURCE = ("connection.shutdown()", "self.server_state.tasks")
WEBSOCKET_CONFIG = ("ws_max_size", "ws_ping_interval", "ws_ping_timeout", "loaded_app")
SERVER_STATE = ("connections", "tasks", "default_headers")
HTTP_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "_unset_keepalive_if_required",
    "on_url",
    "on_headers_complete",
    "on_message_complete",
    "send_400_response",
    "_should_upgrade",
    "handle_websocket_upgrade",
    "_unsupported_upgrade_warning",
    "shutdown",
)
HTTP_ATTRIBUTES = ("cycle", "flow", "logger", "loop", "parser")
CYCLE_ATTRIBUTES = ("self.keep_alive", "self.response_complete")
SUPERVISOR_ATTRIBUTES = ("sockets", "should_exit", "terminate_all", "handle_int", "handle_term")

UPGRADE_ADVICE = (
    "the server relies on uvicorn internals (gateway/uvicorn_ws.py, http_protocol.py, workers.py): "
    "run the whole suite on the new release, fix what breaks, then widen TESTED_UVICORN and the "
    "uvicorn requirement in pyproject.toml together"
)


def version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


def missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


def test_installed_uvicorn_is_a_tested_release() -> None:
    low, high = TESTED_UVICORN
    installed = version_tuple(uvicorn.__version__)
    assert low <= installed < high, (
        f"uvicorn {uvicorn.__version__} is outside TESTED_UVICORN "
        f"(>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}): {UPGRADE_ADVICE}"
    )


def test_pyproject_pins_the_tested_range() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [d for d in dependencies if re.match(r"uvicorn\b", d)]
    low, high = TESTED_UVICORN
    expected = f"uvicorn[standard]>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    assert requirement == expected, f"pyproject.toml has {requirement!r}, TESTED_UVICORN says {expected!r}"


def absent(source: str, needles: tuple[str, ...]) -> list[str]:
    return [needle for needle in needles if needle not in source]


async def test_what_the_server_relies_on_exists() -> None:
    config = Config(asgi_app, ws="sync_server.gateway.uvicorn_ws:WebSocketConnection")
    config.load()
    loop = asyncio.get_running_loop()
    http = HttpToolsProtocol(config, ServerState(), {}, loop)
    cycle_source = inspect.getsource(RequestResponseCycle)
    gaps = {
        "HttpToolsProtocol.handle_websocket_upgrade": absent(
            inspect.getsource(HttpToolsProtocol.handle_websocket_upgrade), UPGRADE_SOURCE
        ),
        "H11Protocol.handle_websocket_upgrade": absent(
            inspect.getsource(H11Protocol.handle_websocket_upgrade), UPGRADE_SOURCE
        ),
        "Server.shutdown": absent(inspect.getsource(Server.shutdown), SHUTDOWN_SOURCE),
        "Config attributes": missing(config, WEBSOCKET_CONFIG),
        "ServerState attributes": missing(ServerState(), SERVER_STATE),
        "HttpToolsProtocol methods": missing(HttpToolsProtocol, HTTP_METHODS),
        "HttpToolsProtocol attributes": missing(http, HTTP_ATTRIBUTES),
        "RequestResponseCycle attributes": [a for a in CYCLE_ATTRIBUTES if a not in cycle_source],
        "Multiprocess attributes": [
            name
            for name in SUPERVISOR_ATTRIBUTES
            if not hasattr(Multiprocess, name) and name not in inspect.getsource(Multiprocess.__init__)
        ],
    }
    gaps = {where: names for where, names in gaps.items() if names}
    assert gaps == {}, f"uvicorn {uvicorn.__version__} lacks {gaps}: {UPGRADE_ADVICE}"
