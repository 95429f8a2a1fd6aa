"""``sync-server migrate``: a store written by the first key layout's own scripts (kept verbatim in
tests/fixtures/layout1) is served after the migration exactly as it was: same SIDs, names, revisions,
data, dates, TTLs and permissions, in the same order. Re-running changes nothing; a run stopped
halfway (``--limit``) is resumed; a server refuses to start on an unmigrated store. All of it on a single
Redis and on a Redis Cluster (the first layout's scripts ran there too: each kept to one service's slot)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import redis as redis_sync

from sync_server.ids import new_sid
from sync_server.store import keys
from tests.support.cluster import ClusterProcesses
from tests.support.processes import ServerProcess, run_cli, start_redis

OLD_SCRIPTS = Path(__file__).parent / "fixtures" / "layout1"


def old_script(name: str) -> str:
    return (OLD_SCRIPTS / "_prelude.lua").read_text() + "\n" + (OLD_SCRIPTS / f"{name}.lua").read_text()


class OldStore:
    """Writes data as the first layout's store did: its scripts, its arguments."""

    def __init__(self, client: redis_sync.Redis | redis_sync.RedisCluster) -> None:
        self.client = client

    def run(self, name: str, keys_: list[str], args: list[Any]) -> Any:
        return self.client.eval(old_script(name), len(keys_), *keys_, *args)

    def service(self, acl: bool) -> str:
        sid = new_sid("IS")
        self.run("svc_index_add", ["sync:{services}:index", "sync:{services}:seq"], [sid])
        settings = ["friendly_name", f"svc {sid[-4:]}", "unique_name", "", "acl_enabled", "1" if acl else "0"]
        assert self.run("svc_create", [f"sync:{{{sid}}}:svc"], ["0", *settings])[0] == b"ok"
        return sid

    def document(self, service: str, name: str, data: dict[str, Any], ttl: int) -> str:
        sid = new_sid("ET")
        reply = self.run(
            "doc_create",
            [f"sync:{{{service}}}:svc"],
            [f"sync:{{{service}}}:", "", "creator", "", sid, name, json.dumps(data), ttl],
        )
        assert reply[0] == b"ok", reply
        return sid

    def write(self, service: str, sid: str, data: dict[str, Any]) -> None:
        args = [sid, "1", json.dumps(data), "set", "", "", 16384]
        reply = self.run(
            "doc_write", [f"sync:{{{service}}}:svc"], [f"sync:{{{service}}}:", "", "w", "", *args]
        )
        assert reply[0] == b"ok", reply

    def permit(self, service: str, sid: str, identity: str, flags: str) -> None:
        reply = self.run(
            "perm", [f"sync:{{{service}}}:svc"], [f"sync:{{{service}}}:", sid, "1", "set", identity, flags]
        )
        assert reply[0] == b"ok", reply


class OldRedis(NamedTuple):
    url: str
    clustered: bool

    def client(self) -> redis_sync.Redis | redis_sync.RedisCluster:
        if self.clustered:
            return redis_sync.RedisCluster.from_url(self.url)
        return redis_sync.Redis.from_url(self.url)


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def old_redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OldRedis]:
    """A store of the test's own: a single Redis, or a cluster of 3 masters (no replicas: nothing here
    fails over). Not the session's cluster: the layout version key is one for the whole store."""
    directory = tmp_path_factory.mktemp(f"migrate-{request.param}")
    if request.param == "standalone":
        proc = start_redis(directory)
        yield OldRedis(proc.url, clustered=False)
        proc.stop()
    else:
        with ClusterProcesses(directory, replicas=0) as cluster:
            yield OldRedis(cluster.url, clustered=True)


def seconds(text: str | None) -> int | None:
    return None if text is None else int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def snapshot(client: redis_sync.Redis | redis_sync.RedisCluster, service: str, sid: str) -> dict[str, Any]:
    """What the first layout holds for one document, as the REST API shows it."""
    fields = {k.decode(): v.decode() for k, v in client.hgetall(f"sync:{{{service}}}:doc:{sid}").items()}
    perms = client.hgetall(f"sync:{{{service}}}:perm:{sid}")
    return {
        "sid": sid,
        "unique_name": fields["n"] or None,
        "revision": format(int(fields["r"]), "x"),
        "data": json.loads(fields["d"]),
        "date_created": int(fields["c"]),
        "date_updated": int(fields["u"]),
        "date_expires": int(fields["x"]) or None,
        "created_by": fields["b"],
        "permissions": sorted((k.decode(), v.decode()) for k, v in perms.items()),
    }


def served(http: httpx.Client, service: str, ident: str) -> dict[str, Any]:
    response = http.get(f"/v1/Services/{service}/Documents/{ident}")
    assert response.status_code == 200, response.text
    body = response.json()
    perms = http.get(f"/v1/Services/{service}/Documents/{ident}/Permissions", params={"PageSize": 100})
    assert perms.status_code == 200, perms.text
    return {
        "sid": body["sid"],
        "unique_name": body["unique_name"],
        "revision": body["revision"],
        "data": body["data"],
        "date_created": seconds(body["date_created"]),
        "date_updated": seconds(body["date_updated"]),
        "date_expires": seconds(body["date_expires"]),
        "created_by": body["created_by"],
        "permissions": sorted(
            (p["identity"], "".join("1" if p[r] else "0" for r in ("read", "write", "manage")))
            for p in perms.json()["permissions"]
        ),
    }


def test_a_store_of_the_first_layout_is_served_the_same_after_migrating(
    old_redis: OldRedis, tmp_path: Path
) -> None:
    client = old_redis.client()
    old = OldStore(client)
    services = [old.service(acl=False), old.service(acl=True), old.service(acl=False)]
    created: dict[str, list[str]] = {s: [] for s in services}
    for n, service in enumerate(services):
        for i in range(40):
            name = f"doc-{i}" if i % 2 else ""
            ttl = 3600 + i if i % 3 == 0 else 0
            sid = old.document(service, name, {"i": i, "s": n, "list": [1, [2]]}, ttl)
            created[service].append(sid)
            if i % 4 == 0:
                old.write(service, sid, {"i": i, "written": True})
                old.write(service, sid, {"i": i, "written": 2})
            if i % 5 == 0:
                old.permit(service, sid, "alice", "110")
                old.permit(service, sid, "bob", "001")
    before = {(s, sid): snapshot(client, s, sid) for s in services for sid in created[s]}
    ttls = {(s, sid): client.ttl(f"sync:{{{s}}}:doc:{sid}") for s in services for sid in created[s]}
    assert any(v["unique_name"] and keys.name_partition(s, v["unique_name"]) != keys.sid_partition(sid)
               for (s, sid), v in before.items())  # fmt: skip

    # The server refuses the old store, naming the command.
    refused = ServerProcess(tmp_path / "refused", redis_url=old_redis.url, startup_timeout=15)
    with pytest.raises(RuntimeError, match="sync-server migrate"):
        refused.start()

    # Stopped halfway, then resumed, then repeated.
    half = run_cli("migrate", "--redis-url", old_redis.url, "--limit", "50")
    assert half.returncode == 3, half.stderr
    assert "50 documents migrated" in half.stdout
    rest = run_cli("migrate", "--redis-url", old_redis.url)
    assert rest.returncode == 0, rest.stderr
    # The first run finished one service and left the second halfway: its first 10 are skipped.
    assert "70 documents migrated, 10 already migrated: complete" in rest.stdout, rest.stdout
    again = run_cli("migrate", "--redis-url", old_redis.url)
    assert again.returncode == 0, again.stderr
    assert "0 documents migrated, 0 already migrated: complete" in again.stdout, again.stdout
    assert client.keys("sync:{IS*}:doc:*") == client.keys("sync:{IS*}:docs") == []
    assert client.keys("sync:{IS*}:perm:*") == client.keys("sync:{IS*}:names") == []

    server = ServerProcess(tmp_path / "server", redis_url=old_redis.url).start()
    try:
        with httpx.Client(base_url=server.base_url, auth=server.auth, timeout=10) as http:
            for (service, sid), expected in before.items():
                assert served(http, service, sid) == expected
                if expected["unique_name"]:
                    assert served(http, service, expected["unique_name"]) == expected
                left = ttls[(service, sid)]
                if left > 0:
                    pttl = client.pttl(keys.document_key(service, sid))
                    assert left - 5_000 <= pttl / 1000 <= left
                else:
                    assert client.ttl(keys.document_key(service, sid)) == -1
            for service in services:
                listed = http.get(f"/v1/Services/{service}/Documents", params={"PageSize": 7})
                walked: list[str] = []
                while True:
                    assert listed.status_code == 200
                    walked += [d["sid"] for d in listed.json()["documents"]]
                    following = listed.json()["meta"]["next_page_url"]
                    if following is None:
                        break
                    listed = http.get(following)
                assert walked == created[service]
            # Names stay unique across the move: a taken one is refused, then freed by a delete.
            service = services[0]
            name = next(v["unique_name"] for (s, _), v in before.items() if s == service and v["unique_name"])
            url = f"/v1/Services/{service}/Documents"
            assert http.post(url, data={"UniqueName": name}).status_code == 409
            assert http.delete(f"{url}/{name}").status_code == 204
            remade = http.post(url, data={"UniqueName": name, "Data": '{"new":1}'})
            assert remade.status_code == 201
            assert http.get(f"{url}/{name}").json()["data"] == {"new": 1}
    finally:
        server.stop()
        client.close()
