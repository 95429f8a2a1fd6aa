"""The official Twilio Sync JS SDK's browser build, unmodified, in headless Chromium against a real server.

The SDK is not our code, so neither the repository nor the server's static files carry it: a tiny
HTTP server of the test, on another loopback port, serves a small test page and the UMD bundle from
``tests/js/node_modules`` (``npm ci --prefix tests/js``), which defines the global ``Twilio.Sync``.
The pages then talk to the sync server only through its websocket (``/v3/wsconnect``), cross-origin
as an app's page talks to Twilio. Every request and websocket a page opens is recorded: the SDK
must need nothing beyond the page, its bundle and that one websocket.

(Why not answer a same-origin URL through Playwright's ``page.route``: Chromium's Local Network
Access checks treat such an intercepted document as public and block its websocket to 127.0.0.1.)

Needs Debian's ``chromium``, the ``playwright`` package and the SDK's node_modules. Without them the
test skips on a developer machine, but fails when ``CI`` is set: CI must run it.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS, missing_chromium
from tests.support.processes import ServerProcess, start_redis
from tests.support.sdk import BROWSER_BUNDLE, access_token, missing_node_sdk, require

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, WebSocket

# Generous: two cores, shared with other test runs and a browser.
TIMEOUT_MS = 30_000
PAGE_PATH = "/index.html"
BUNDLE_PATH = "/twilio-sync.min.js"

# The page an app would have: the SDK's script tag, and a few globals the test reads.
TEST_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>twilio-sync in a browser</title>
<link rel="icon" href="data:,">
<script src="/twilio-sync.min.js"></script>
<script>
  // page.evaluate() has no timeout of its own: every promise the test awaits goes through this.
  function bounded(promise, ms = TIMEOUT_MS) {
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), ms));
    return Promise.race([promise, timeout]);
  }

  // Observation only: resolves once the SDK's subscription to the document is established, so
  // that later writes must arrive as live events.
  async function subscribed(doc) {
    const subscriptions = doc.syncDocumentImpl.services.subscriptions;
    for (let i = 0; i < 800; i++) {
      if (subscriptions.persisted.get(doc.sid)?.isEstablished) return;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    throw new Error("the subscription was not established");
  }

  window.states = [];
  window.updates = [];
  window.openDocument = async ({ token, uri, name }) => {
    const client = new Twilio.Sync.Client(token, { twilsock: { uri } });
    client.on("connectionStateChanged", (state) => states.push(state));
    const doc = await client.document(name);
    doc.on("updated", (e) => updates.push({ data: e.data, isLocal: e.isLocal, revision: doc.revision }));
    Object.assign(window, { client, doc });
    await subscribed(doc);
    return { sid: doc.sid, revision: doc.revision, data: doc.data };
  };
</script>
""".replace("TIMEOUT_MS", str(TIMEOUT_MS))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(missing_chromium() + missing_node_sdk(node=False), "the SDK browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageHandler(BaseHTTPRequestHandler):
    """The test page and the SDK's bundle, read from node_modules on each request; nothing else."""

    def do_GET(self) -> None:
        if self.path == PAGE_PATH:
            self._send(TEST_PAGE.encode(), "text/html; charset=utf-8")
        elif self.path == BUNDLE_PATH:
            self._send(BROWSER_BUNDLE.read_bytes(), "text/javascript; charset=utf-8")
        else:
            self.send_error(404)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@dataclass
class Stack:
    server: ServerProcess
    service: str
    page_origin: str

    @property
    def ws_url(self) -> str:
        return self.server.base_url.replace("http://", "ws://") + "/v3/wsconnect"

    def document_url(self, name: str) -> str:
        return f"{self.server.base_url}/v1/Services/{self.service}/Documents/{name}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, page_origin: str) -> Iterator[Stack]:
    redis = start_redis(tmp_path_factory.mktemp("sdk-browser-redis"))
    server = ServerProcess(tmp_path_factory.mktemp("sdk-browser-server"), redis_url=redis.url)
    try:
        server.start()
        response = httpx.post(
            f"{server.base_url}/v1/Services", data={"FriendlyName": "sdk-browser"}, auth=server.auth
        )
        assert response.status_code == 201, response.text
        yield Stack(server, response.json()["sid"], page_origin)
    finally:
        server.stop()
        redis.stop()


@dataclass
class SdkPage:
    """One person's browser context on the test page, and whatever went wrong in it."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)
        self.page.on("websocket", self._websocket)

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _websocket(self, websocket: WebSocket) -> None:
        self.websockets.append(websocket.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def open_document(self, stack: Stack, token: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate(
            "args => bounded(openDocument(args))", {"token": token, "uri": stack.ws_url, "name": name}
        )
        return result

    def wait_for_revision(self, revision: str) -> None:
        self.page.wait_for_function("revision => doc.revision === revision", arg=revision)

    def run(self, expression: str, arg: Any = None) -> Any:
        """Evaluates ``expression`` in the page (a promise it returns must use ``bounded``)."""
        return self.page.evaluate(expression, arg)


def open_page(browser: Browser, stack: Stack) -> SdkPage:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    tab = SdkPage(context, context.new_page())
    tab.page.goto(stack.page_origin + PAGE_PATH)
    return tab


def rest_update(stack: Stack, name: str, data: dict[str, Any]) -> str:
    response = httpx.post(
        stack.document_url(name), data={"Data": json.dumps(data)}, auth=stack.server.auth, timeout=30.0
    )
    assert response.status_code == 200, response.text
    revision: str = response.json()["revision"]
    return revision


def test_two_pages_and_rest_share_a_document(browser: Browser, stack: Stack) -> None:
    name = f"browser-{secrets.token_hex(4)}"
    alice = open_page(browser, stack)
    bob = open_page(browser, stack)
    try:
        sdk = "() => [typeof Twilio.Sync.Client, Twilio.Sync.Client === Twilio.Sync.SyncClient]"
        assert alice.run(sdk) == ["function", True]
        opened = [
            alice.open_document(stack, access_token(stack.service, "alice"), name),
            bob.open_document(stack, access_token(stack.service, "bob"), name),
        ]
        assert opened[0] == opened[1] == {"sid": opened[0]["sid"], "revision": "0", "data": {}}

        # set() in one page shows in the other…
        first = {"text": "hello from alice", "count": 1}
        assert alice.run("data => bounded(doc.set(data)).then(() => doc.revision)", first) == "1"
        bob.wait_for_revision("1")
        assert bob.run("() => doc.data") == first

        # …and update() the other way round (merged into the server's current data).
        assert bob.run("patch => bounded(doc.update(patch)).then(() => doc.revision)", {"count": 2}) == "2"
        alice.wait_for_revision("2")
        merged = {"text": "hello from alice", "count": 2}
        assert alice.run("() => doc.data") == merged

        # A backend writes through REST: both pages follow.
        from_rest = {"text": "set by the backend", "count": 41}
        assert rest_update(stack, name, from_rest) == "3"
        for tab in (alice, bob):
            tab.wait_for_revision("3")
            assert tab.run("() => doc.data") == from_rest

        # Each page fired `updated` once per revision, in order. What the other page or REST wrote
        # came as a remote event; a page's own write may be reported either way (reply and event race).
        remote = {"alice": {"2", "3"}, "bob": {"1", "3"}}
        for who, tab in (("alice", alice), ("bob", bob)):
            updates = tab.run("() => updates")
            assert [(u["revision"], u["data"]) for u in updates] == [
                ("1", first),
                ("2", merged),
                ("3", from_rest),
            ]
            assert all(not u["isLocal"] for u in updates if u["revision"] in remote[who]), updates

        rest = httpx.get(stack.document_url(name), auth=stack.server.auth).json()
        assert (rest["data"], rest["revision"], rest["sid"]) == (from_rest, "3", opened[0]["sid"])
        for tab in (alice, bob):
            assert tab.run("() => client.connectionState") == "connected"
            assert tab.run("() => states")[-1] == "connected"
            assert tab.errors == []
            # Nothing but the page, its bundle and one websocket to the sync server.
            assert tab.requests == [stack.page_origin + PAGE_PATH, stack.page_origin + BUNDLE_PATH]
            assert tab.websockets == [stack.ws_url]
    finally:
        for tab in (alice, bob):
            tab.run("() => window.client && bounded(client.shutdown(), 5000)")
            tab.context.close()
