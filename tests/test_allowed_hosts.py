"""Links come from trusted configuration, never from a forged ``Host``.

Without a public URL, links are built from the request's Host, so a Host outside the allowed hosts
is refused (400/20001) on every route and websocket handshake; ``/healthz`` answers any Host.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sync_server import errors
from sync_server.config import Settings
from sync_server.hosts import HostPolicy, default_allowed_hosts, invalid_patterns, parse_allowed_hosts
from tests.support.processes import TEST_CREDENTIALS_ENV, RedisProcess, ServerProcess, run_cli, subprocess_env

EVIL = "evil.example"
PUBLIC = "https://sync.example.com/base"


# -- the rule, pure --------------------------------------------------------------------------------------


def test_defaults_are_the_listening_address_and_loopback() -> None:
    loopback = ("localhost", "127.0.0.1", "[::1]")
    assert default_allowed_hosts("127.0.0.1", 8080) == loopback
    assert default_allowed_hosts("0.0.0.0", 80) == loopback
    assert default_allowed_hosts("::", 9000) == loopback
    assert default_allowed_hosts("::1", 9000) == loopback
    assert default_allowed_hosts("10.0.0.5", 9000) == ("10.0.0.5:9000", *loopback)
    assert default_allowed_hosts("fd00::5", 9000) == ("[fd00::5]:9000", *loopback)
    assert default_allowed_hosts("Sync.Local", 1)[0] == "sync.local:1"
    assert default_allowed_hosts("0.0.0.0", 8080, PUBLIC)[-1] == "sync.example.com"
    assert (
        default_allowed_hosts("0.0.0.0", 8080, "http://u:p@Sync.Example.com:8443")[-1]
        == "sync.example.com:8443"
    )


def test_settings_from_env_use_the_listening_address() -> None:
    env = dict(TEST_CREDENTIALS_ENV, SYNC_HOST="10.1.2.3", SYNC_PORT="9001")
    assert Settings.from_env(env).allowed_hosts[:2] == ("10.1.2.3:9001", "localhost")
    assert Settings.from_env(TEST_CREDENTIALS_ENV).allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    listed = dict(env, SYNC_ALLOWED_HOSTS=" A.example:1, ,*.b.example ")
    assert Settings.from_env(listed).allowed_hosts == ("a.example:1", "*.b.example")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("10.0.0.5:8080", True),
        ("10.0.0.5:8081", False),
        ("10.0.0.5", False),
        ("localhost:8080", True),
        ("LOCALHOST:9000", True),
        ("localhost.:8080", True),
        ("localhost", True),
        ("127.0.0.1:1", True),
        ("[::1]:8080", True),
        ("[::1]", True),
        (None, True),  # HTTP/1.0: links then use the socket's own address
        (EVIL, False),
        (f"{EVIL}:8080", False),
        ("localhost:8080@evil.example", False),
        ("localhost:8080/x", False),
        ("localhost:8080 evil", False),
        ("localhost:http", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example:8080", False),
        ("", False),
        ("sync.example.com", True),
        ("sync.example.com:444", True),
        ("api.corp.example", True),
        ("a.b.corp.example:1", True),
        ("corp.example", False),
        ("evilcorp.example", False),
        ("pinned.example:443", True),
        ("pinned.example", False),
        ("pinned.example:444", False),
    ],
)
def test_host_policy(host: str | None, allowed: bool) -> None:
    patterns = [
        *default_allowed_hosts("10.0.0.5", 8080),
        "sync.example.com",
        "*.corp.example",
        "pinned.example:443",
    ]
    assert HostPolicy(patterns).allows(host) is allowed


def test_star_allows_any_host() -> None:
    assert HostPolicy(["*"]).allows(EVIL)


def test_invalid_patterns_are_reported() -> None:
    assert parse_allowed_hosts("a.example, *.b.example:1,*,[::1]:2") == (
        "a.example",
        "*.b.example:1",
        "*",
        "[::1]:2",
    )
    assert invalid_patterns(parse_allowed_hosts("a.example,*.b.example:1,*,[::1]:2")) == []
    assert invalid_patterns(["a b", "h:port", "[::1", "::1", "x/y", ":80"]) == [
        "a b",
        "h:port",
        "[::1",
        "::1",
        "x/y",
        ":80",
    ]


# -- a real server ----------------------------------------------------------------------------------------


def get(server: ServerProcess, path: str, host: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", headers={"Host": host}, auth=server.auth, timeout=10)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == errors.HostNotAllowed(response.json()["message"]).to_dict()
    assert response.json()["code"] == 20001
    assert "SYNC_ALLOWED_HOSTS" in response.json()["message"]


def handshake_status(server: ServerProcess, path: str, host: str) -> int:
    """The status line of a websocket upgrade sent with ``host`` (101 when accepted)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return int(sock.makefile("rb").readline().split()[1])


def test_a_forged_host_is_refused_on_every_route(server: ServerProcess) -> None:
    for path in ("/v1/Services", "/v1/Services/default/Documents", "/v1", "/sdk/sync.js", "/demo", "/nope"):
        assert_refused(get(server, path, EVIL))
    health = get(server, "/healthz", EVIL)  # probes may use any address
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    created = httpx.post(
        f"{server.base_url}/v1/Services/default/Documents", headers={"Host": EVIL}, auth=server.auth, data={}
    )
    assert_refused(created)


def test_a_forged_host_is_refused_on_the_websocket_handshakes(server: ServerProcess) -> None:
    for path in ("/ws", "/v3/wsconnect"):
        assert handshake_status(server, path, EVIL) == 400
        assert handshake_status(server, path, f"127.0.0.1:{server.port}") == 101
        assert handshake_status(server, path, f"{EVIL}:{server.port}") == 400


@pytest.mark.parametrize("port", ["own", "forwarded"])
def test_links_use_an_allowed_host(server: ServerProcess, port: str) -> None:
    # A forwarded port (docker -p 9000:8080, ssh -L) is what the client sees: links keep it.
    host = f"localhost:{server.port if port == 'own' else 9000}"
    page = get(server, "/v1/Services/default/Documents?PageSize=1", host)
    assert page.status_code == 200
    assert page.json()["meta"]["url"].startswith(f"http://{host}/v1/Services/")
    created = httpx.post(
        f"{server.base_url}/v1/Services/default/Documents", headers={"Host": host}, auth=server.auth, data={}
    )
    assert created.status_code == 201
    assert created.json()["url"].startswith(f"http://{host}/v1/Services/")


@pytest.fixture(scope="module")
def public_server(
    redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("public"), redis_url=redis_proc.url, args=["--public-url", PUBLIC]
    )
    yield proc.start()
    proc.kill()


def test_with_a_public_url_links_never_follow_the_host(public_server: ServerProcess) -> None:
    for host in (f"127.0.0.1:{public_server.port}", "sync.example.com"):
        page = get(public_server, "/v1/Services/default/Documents", host)
        assert page.status_code == 200, page.text
        assert page.json()["meta"]["url"].startswith(f"{PUBLIC}/v1/Services/")
    # Still refused: the server answers only for names it was given.
    assert_refused(get(public_server, "/v1/Services/default/Documents", EVIL))


def test_star_behind_a_proxy_accepts_any_host_and_links_use_the_public_url(
    redis_proc: RedisProcess, tmp_path: Path
) -> None:
    args = ["--public-url", PUBLIC, "--allowed-hosts", "*"]
    with ServerProcess(tmp_path, redis_url=redis_proc.url, args=args) as proxied:
        page = get(proxied, "/v1/Services/default/Documents", EVIL)
        assert page.status_code == 200, page.text
        assert page.json()["meta"]["url"].startswith(f"{PUBLIC}/v1/Services/")
        assert handshake_status(proxied, "/ws", EVIL) == 101


def test_an_explicit_list_replaces_the_defaults(redis_proc: RedisProcess, tmp_path: Path) -> None:
    env = {"SYNC_ALLOWED_HOSTS": "sync.internal:8080,*.example.net"}
    with ServerProcess(tmp_path, redis_url=redis_proc.url, env=env) as listed:
        page = get(listed, "/v1/Services/default/Documents", "sync.internal:8080")
        assert page.status_code == 200, page.text
        assert page.json()["meta"]["url"].startswith("http://sync.internal:8080/v1/Services/")
        assert get(listed, "/v1/Services", "a.example.net").status_code == 200
        assert_refused(get(listed, "/v1/Services", f"127.0.0.1:{listed.port}"))


def test_the_cli_refuses_star_without_a_public_url_and_bad_patterns(tmp_path: Path) -> None:
    env = subprocess_env()
    star = run_cli("serve", "--data-dir", str(tmp_path), "--allowed-hosts", "*", env=env)
    assert star.returncode == 1
    assert "needs --public-url" in star.stderr and "Traceback" not in star.stderr
    bad = run_cli("serve", "--data-dir", str(tmp_path), "--allowed-hosts", "good.example,bad host", env=env)
    assert bad.returncode == 2
    assert "not a host[:port] pattern: 'bad host'" in bad.stderr
