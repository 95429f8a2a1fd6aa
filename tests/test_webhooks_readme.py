"""The receiver example of README "Webhooks", run as written (only its URL constant set to where it
listens here): it accepts a real server's webhook, signature checked by the official ``twilio``
library, and refuses a request whose signature does not match."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.processes import (
    REPO_ROOT,
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
    free_port,
    start_redis,
    subprocess_env,
)


def readme_receiver() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(# receiver\.py\n.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1, "README's Webhooks section has one receiver example"
    return blocks[0]


def test_the_readme_receiver_validates_real_webhooks(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/sync-webhook"
    source = readme_receiver()
    assert 'PUBLIC_URL = "https://backend.example.com/sync-webhook"' in source
    (tmp_path / "receiver.py").write_text(source.replace("https://backend.example.com/sync-webhook", url))
    env = subprocess_env({"SYNC_AUTH_TOKEN": TEST_AUTH_TOKEN})
    log = (tmp_path / "receiver.log").open("wb")
    command = [sys.executable, "-m", "uvicorn", "receiver:app", "--port", str(port), "--log-level", "info"]
    receiver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    redis = start_redis(tmp_path / "redis")
    server = ServerProcess(tmp_path / "server", redis_url=redis.url, env={"SYNC_WEBHOOK_LEASE": "2"})
    try:
        server.start()
        auth = (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
        form = {"WebhookUrl": url, "WebhooksFromRestEnabled": "true"}
        service = httpx.post(f"{server.base_url}/v1/Services", data=form, auth=auth).json()["sid"]
        docs = f"{server.base_url}/v1/Services/{service}/Documents"
        created = httpx.post(docs, data={"UniqueName": "readme", "Data": '{"from":"readme"}'}, auth=auth)
        assert created.status_code == 201
        deadline = time.monotonic() + 30
        output = ""
        while "document_created" not in output and time.monotonic() < deadline:
            time.sleep(0.1)
            output = (tmp_path / "receiver.log").read_text()
        assert f'document_created {created.json()["sid"]} {{"from":"readme"}}' in output
        assert '"POST /sync-webhook HTTP/1.1" 204' in output
        forged = httpx.post(
            url, data={"EventType": "document_removed"}, headers={"X-Twilio-Signature": "forged"}
        )
        assert forged.status_code == 403
    finally:
        server.kill()
        redis.stop()
        receiver.kill()
        receiver.wait()
        log.close()
