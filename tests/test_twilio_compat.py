"""The official ``twilio`` Python library (9.x) against a real server process: every test twice, on the
session's single Redis and on its Redis Cluster (3 masters, 3 replicas; the server pointed at one node).

The library is synchronous (requests), so these are plain sync tests. It is pointed at the server
with ``client.sync.base_url``, as the README tells users to do.

How twilio 9.13 puts a document into a URL: ``"/Services/{service_sid}/Documents/{sid}".format(...)``,
with no encoding at all; requests then percent-encodes what may not appear in a path (spaces,
non-ASCII) but leaves ``/`` as it is. A unique name with ``/`` therefore arrives as several path
segments, which the server's router joins back (see rest/api.py). What no server can undo: a
``?`` or ``#`` in a name starts the query or fragment, and requests decodes ``%XX`` escapes of
unreserved characters (``"50%41"`` is sent as ``"50A"``); such names must be addressed by SID.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from tests.support.processes import (
    TEST_ACCOUNT_SID,
    TEST_API_KEY_SECRET,
    TEST_API_KEY_SID,
    TEST_AUTH_TOKEN,
    ServerProcess,
)


def client_for(server: ServerProcess, user: str, secret: str, account_sid: str | None = None) -> Client:
    client = Client(user, secret, account_sid)
    client.sync.base_url = server.base_url
    return client


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> ServerProcess:
    """The server under test: on a single Redis, then on a Redis Cluster."""
    server: ServerProcess = request.getfixturevalue(
        "server" if request.param == "standalone" else "cluster_server"
    )
    return server


@pytest.fixture(scope="module")
def twilio(target: ServerProcess) -> Client:
    return client_for(target, TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)


@pytest.fixture
def service_sid(twilio: Client) -> Iterator[str]:
    service = twilio.sync.v1.services.create(friendly_name=f"compat-{uuid.uuid4().hex[:8]}")
    yield service.sid
    twilio.sync.v1.services(service.sid).delete()


def test_service_create_fetch_update(twilio: Client, service_sid: str) -> None:
    service = twilio.sync.v1.services(service_sid).fetch()
    assert service.sid == service_sid
    assert service.account_sid == TEST_ACCOUNT_SID
    assert service.reachability_debouncing_window == 5000
    assert service.acl_enabled is False
    assert isinstance(service.date_created, datetime)
    assert service.links is not None and service.links["documents"].endswith(f"/{service_sid}/Documents")
    updated = twilio.sync.v1.services(service_sid).update(
        acl_enabled=True, reachability_debouncing_window=2000
    )
    assert updated.acl_enabled is True
    assert updated.reachability_debouncing_window == 2000
    assert service_sid in [s.sid for s in twilio.sync.v1.services.stream(page_size=50)]


def test_document_lifecycle(twilio: Client, service_sid: str) -> None:
    documents = twilio.sync.v1.services(service_sid).documents
    big = 2**80 + 1
    created = documents.create(
        unique_name="profile", data={"name": "Ada", "n": big, "tags": [], "o": {}}, ttl=3600
    )
    assert created.sid is not None and created.sid.startswith("ET")
    assert created.unique_name == "profile"
    assert created.revision == "0"
    assert created.data == {"name": "Ada", "n": big, "tags": [], "o": {}}
    assert created.created_by == "system"
    assert created.date_created is not None and created.date_expires is not None
    assert created.date_expires - created.date_created == timedelta(seconds=3600)
    assert created.date_created.tzinfo == UTC
    assert created.url == f"{twilio.sync.base_url}/v1/Services/{service_sid}/Documents/{created.sid}"

    by_sid = documents(created.sid).fetch()
    by_name = documents("profile").fetch()
    assert by_sid.sid == by_name.sid == created.sid
    assert by_name.data == created.data

    updated = documents(created.sid).update(data={"name": "Grace"}, if_match="0")
    assert updated.revision == "1"
    assert updated.data == {"name": "Grace"}
    assert updated.date_expires == created.date_expires  # no Ttl sent: the expiry stays

    with pytest.raises(TwilioRestException) as stale:
        documents("profile").update(data={"name": "lost"}, if_match="0")
    assert (stale.value.status, stale.value.code) == (412, 54103)
    assert documents("profile").fetch().data == {"name": "Grace"}

    cleared = documents("profile").update(ttl=0)
    assert cleared.date_expires is None

    assert documents("profile").delete() is True
    with pytest.raises(TwilioRestException) as missing:
        documents(created.sid).fetch()
    assert (missing.value.status, missing.value.code) == (404, 20404)


def test_create_without_data(twilio: Client, service_sid: str) -> None:
    created = twilio.sync.v1.services(service_sid).documents.create()
    assert created.data == {}
    assert created.unique_name is None
    assert created.date_expires is None


def test_paging(twilio: Client, service_sid: str) -> None:
    documents = twilio.sync.v1.services(service_sid).documents
    sids = [documents.create(unique_name=f"doc-{i}", data={"i": i}).sid for i in range(7)]

    limited = documents.list(limit=5, page_size=3)
    assert [d.sid for d in limited] == sids[:5]
    assert [d.sid for d in documents.stream(page_size=3)] == sids

    page = documents.page(page_size=3)
    pages = []
    while page is not None:
        pages.append([d.sid for d in page])
        page = page.next_page()
    assert pages == [sids[0:3], sids[3:6], sids[6:]]


@pytest.mark.parametrize(
    "name", ["rooms/42/state", "unicodé ✓ 日本 𝄞", "a b/c d", "50%", "a+b", "ends.with.dot."]
)
def test_unique_names_through_the_library(twilio: Client, service_sid: str, name: str) -> None:
    documents = twilio.sync.v1.services(service_sid).documents
    created = documents.create(unique_name=name, data={"v": 1})
    fetched = documents(name).fetch()
    assert fetched.sid == created.sid
    assert fetched.unique_name == name
    assert documents(name).update(data={"v": 2}, if_match="0").revision == "1"
    permission = documents(name).document_permissions("alice").update(read=True, write=False, manage=False)
    assert permission.document_sid == created.sid
    assert [p.identity for p in documents(name).document_permissions.list()] == ["alice"]
    assert documents(name).delete() is True
    with pytest.raises(TwilioRestException) as missing:
        documents(created.sid).fetch()
    assert missing.value.status == 404


def test_errors(twilio: Client, service_sid: str) -> None:
    documents = twilio.sync.v1.services(service_sid).documents
    documents.create(unique_name="once")
    with pytest.raises(TwilioRestException) as duplicate:
        documents.create(unique_name="once")
    assert (duplicate.value.status, duplicate.value.code) == (409, 54301)
    with pytest.raises(TwilioRestException) as unknown_service:
        twilio.sync.v1.services("IS" + "0" * 32).documents("once").fetch()
    assert (unknown_service.value.status, unknown_service.value.code) == (404, 54050)
    with pytest.raises(TwilioRestException) as bad_ttl:
        documents.create(ttl=31_536_001)
    assert (bad_ttl.value.status, bad_ttl.value.code) == (400, 54011)


def test_credentials(target: ServerProcess) -> None:
    with_key = client_for(target, TEST_API_KEY_SID, TEST_API_KEY_SECRET, TEST_ACCOUNT_SID)
    assert with_key.sync.v1.services.list(limit=1) is not None
    wrong = client_for(target, TEST_ACCOUNT_SID, "not-the-token")
    # (A list raises the library's plain TwilioException on any non-200 page; fetch is typed.)
    with pytest.raises(TwilioRestException) as refused:
        wrong.sync.v1.services("default").fetch()
    assert (refused.value.status, refused.value.code) == (401, 20003)


def test_default_service_alias(twilio: Client) -> None:
    default = twilio.sync.v1.services("default").fetch()
    assert default.sid is not None and default.sid.startswith("IS")
    name = f"via-default-{uuid.uuid4().hex}"
    created = twilio.sync.v1.services("default").documents.create(unique_name=name)
    assert created.service_sid == default.sid
    assert twilio.sync.v1.services(default.sid).documents(name).fetch().sid == created.sid
    twilio.sync.v1.services("default").documents(name).delete()
