"""The webhook deliverer's own Redis connections (the blocking reads, not the store's multiplexed one)
speak TLS to a ``rediss://`` URL with the same verification options: a whole server on a redis-server
listening on TLS only delivers a webhook."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ServerProcess
from tests.support.webhooks import Receiver, valid_signature
from tests.test_multiplex_tls import _make_certificates, _tls_server


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("webhooks-tls")
    _make_certificates(directory)
    with _tls_server(directory, client_certificates=False) as port:
        yield f"rediss://localhost:{port}/0?ssl_ca_certs={directory / 'ca.crt'}"


async def test_webhooks_are_read_over_tls(tls_url: str, tmp_path: Path) -> None:
    with Receiver() as receiver:
        url = receiver.url("/tls")
        server = ServerProcess(tmp_path, redis_url=tls_url, env={"SYNC_WEBHOOK_LEASE": "2"}).start()
        try:
            async with httpx.AsyncClient(base_url=server.base_url, auth=server.auth) as http:
                form = {"WebhookUrl": url, "WebhooksFromRestEnabled": "true"}
                service = (await http.post("/v1/Services", data=form)).json()["sid"]
                created = await http.post(f"/v1/Services/{service}/Documents", data={"UniqueName": "tls"})
                assert created.status_code == 201
            await receiver.wait_for(lambda r: len(r.delivered("/tls")) == 1)
            (delivered,) = receiver.delivered("/tls")
            assert delivered.params["DocumentUniqueName"] == "tls"
            assert valid_signature(url, delivered)
            assert "Traceback" not in server.log_tail(200)
        finally:
            server.kill()
