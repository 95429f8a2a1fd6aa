"""The scripts' multiplexed connection over TLS (``rediss://``), against a redis-server that listens on
TLS only, with a throwaway CA made here: verified by the CA given in the URL, refused when the server's
certificate does not verify (unknown CA, wrong host name), accepted unverified when told so."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from sync_server.embedded import find_redis_server
from sync_server.principal import Principal
from sync_server.store.cluster_client import connect_store
from sync_server.store.multiplex import (
    CannotConnectError,
    ConnectionLostError,
    MultiplexedRedis,
    params_from_url,
)
from sync_server.store.redis_store import RedisStore
from tests.support.processes import TEST_ACCOUNT_SID, ServerProcess, free_port
from tests.support.realtime import Peer, ws_url


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path
    other_ca: Path
    """A CA that did not sign the server's certificate."""


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        directory,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}"),
    )


def _make_certificates(directory: Path) -> None:
    """A CA, a server certificate it signed for the name ``localhost`` only, a client certificate it
    signed, and an unrelated CA."""
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _openssl(
        directory,
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"),
    )
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    _openssl(
        directory,
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"),
        *("-out", "server.crt", "-days", "2", "-extfile", "ext.cnf"),
    )
    # A client certificate from the same CA, for a server that requires one.
    _openssl(
        directory,
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=sync-server"),
    )
    _openssl(
        directory,
        *("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"),
        *("-out", "client.crt", "-days", "2"),
    )


@contextlib.contextmanager
def _tls_server(directory: Path, *, client_certificates: bool) -> Iterator[int]:
    """A redis-server listening on TLS only (``--port 0``); yields its port."""
    port = free_port()
    command = [
        find_redis_server(),
        *("--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port)),
        *("--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt"),
        *("--tls-auth-clients", "yes" if client_certificates else "no"),
        *("--save", "", "--appendonly", "no", "--dir", str(directory)),
    ]
    log_path = directory / f"redis-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"TLS redis-server did not start: {log_path.read_text()}")
                time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls-redis")
    _make_certificates(directory)
    return directory


@pytest.fixture(scope="module")
def tls_redis(certificates: Path) -> Iterator[TlsRedis]:
    with _tls_server(certificates, client_certificates=False) as port:
        yield TlsRedis(port, certificates / "ca.crt", certificates / "other-ca.crt")


async def test_verified_by_the_ca_given_in_the_url(tls_redis: TlsRedis) -> None:
    url = f"rediss://localhost:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
    connection = MultiplexedRedis(params_from_url(url))
    try:
        assert await connection.execute("SET", "tls:key", "over tls") == b"OK"
        assert await connection.execute("GET", "tls:key") == b"over tls"
        assert await connection.execute("EVAL", "return ARGV[1]", 0, "scripted") == b"scripted"
    finally:
        await connection.aclose()


async def test_a_server_whose_certificate_does_not_verify_is_refused(tls_redis: TlsRedis) -> None:
    unknown_ca = f"rediss://localhost:{tls_redis.port}/0?ssl_ca_certs={tls_redis.other_ca}"
    # Signed by the right CA, but for "localhost", not for the address connected to.
    wrong_name = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
    for url in (unknown_ca, wrong_name):
        connection = MultiplexedRedis(params_from_url(url))
        with pytest.raises(CannotConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await connection.execute("PING")
        await connection.aclose()


async def test_hostname_check_can_be_turned_off_and_verification_too(tls_redis: TlsRedis) -> None:
    no_hostname = (
        f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}&ssl_check_hostname=false"
    )
    unverified = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=none"
    for url in (no_hostname, unverified):
        connection = MultiplexedRedis(params_from_url(url))
        try:
            assert await connection.execute("PING") == b"PONG"
        finally:
            await connection.aclose()


async def test_plaintext_to_the_tls_port_is_a_lost_connection(tls_redis: TlsRedis) -> None:
    """What issue 12 found: the URL said TLS, the connection spoke plaintext; the server hangs up."""
    connection = MultiplexedRedis({"host": "127.0.0.1", "port": tls_redis.port}, timeout=1.0)
    with pytest.raises(ConnectionLostError):
        await connection.execute("PING")
    await connection.aclose()


async def test_the_store_runs_its_scripts_over_tls(tls_redis: TlsRedis) -> None:
    url = f"rediss://localhost:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
    standalone = await connect_store(url)
    assert isinstance(standalone, MultiplexedRedis)
    await standalone.aclose()
    store = RedisStore(Redis.from_url(url), TEST_ACCOUNT_SID)
    try:
        service = await store.create_service({"friendly_name": "over tls"})
        document = await store.create_document(Principal.system(service.sid), "tls-doc", b'{"a":1}', 0)
        assert document.unique_name == "tls-doc"
        assert (document.revision, document.data) == (0, b'{"a":1}')
        assert (await store.fetch_service(service.sid)).friendly_name == "over tls"
    finally:
        await store.close()


async def test_a_client_certificate_from_the_url_is_presented(certificates: Path) -> None:
    with _tls_server(certificates, client_certificates=True) as port:
        base = f"rediss://localhost:{port}/0?ssl_ca_certs={certificates / 'ca.crt'}"
        with_certificate = (
            f"{base}&ssl_certfile={certificates / 'client.crt'}&ssl_keyfile={certificates / 'client.key'}"
        )
        connection = MultiplexedRedis(params_from_url(with_certificate))
        try:
            assert await connection.execute("PING") == b"PONG"
        finally:
            await connection.aclose()
        # Without one the server hangs up (during the handshake, or right after it with TLS 1.3).
        connection = MultiplexedRedis(params_from_url(base))
        with pytest.raises((CannotConnectError, ConnectionLostError)):
            await connection.execute("PING")
        await connection.aclose()


async def test_a_whole_server_on_rediss(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """Every connection the server opens speaks TLS: the scripts (REST writes), redis-py's
    (``/healthz``, service reads) and the hub's pub/sub (a websocket subscriber gets the event)."""
    url = f"rediss://localhost:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
    server = ServerProcess(tmp_path, redis_url=url).start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            created = await http.post("/v1/Services/default/Documents", data={"UniqueName": "over-tls"})
            assert created.status_code == 201, created.text
            peer = await Peer.connect(ws_url(server))
            try:
                await peer.ok("subscribe", doc="over-tls")
                written = await http.post(
                    "/v1/Services/default/Documents/over-tls", data={"Data": '{"tls":1}'}
                )
                assert written.status_code == 200
                await peer.wait_until(lambda p: any(e["event"] == "updated" for e in p.events))
                assert peer.events[-1]["document"]["data"] == {"tls": 1}
            finally:
                await peer.close()
        assert "Traceback" not in server.log_tail(200)
    finally:
        server.kill()
