"""The pure parts of webhooks: the signature against the official ``twilio`` library's validator, the
form of each event type, the encodings that carry a webhook through Redis lists, and the backoff."""

from __future__ import annotations

import random

import pytest
from twilio.request_validator import RequestValidator

from sync_server.webhooks.events import (
    Dropped,
    Waiting,
    Webhook,
    decode_item,
    describe,
    encode_item,
    from_entry,
)
from sync_server.webhooks.outbox import Entry
from sync_server.webhooks.retry import RetryPolicy
from sync_server.webhooks.sender import Sender, signed_url
from sync_server.webhooks.signature import signature

ACCOUNT = "AC" + "1" * 32
TOKEN = "an-auth-token"
SERVICE = "IS" + "2" * 32
DOCUMENT = "ET" + "3" * 32


def entry(**fields: str) -> Entry:
    base = {"e": "document_updated", "s": SERVICE, "sid": DOCUMENT, "n": "", "r": "", "w": "system", "ep": ""}
    return Entry(7, "1733100000123-4", {**base, "u": "https://example.com/hook", **fields})


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "https://example.com:8443/sync/hook?source=sync&x=a%20b",
        "http://127.0.0.1:9000/h",
    ],
)
def test_the_signature_is_what_twilios_validator_expects(url: str) -> None:
    params = {
        "AccountSid": ACCOUNT,
        "EventType": "document_updated",
        "DocumentData": '{"text":"héllo & ünïcode \\n","n":[1,2]}',
        "Identity": "alice@example.com",
        "DocumentUniqueName": "a name with spaces",
        "DocumentRevision": "12",
    }
    computed = signature(TOKEN, url, params)
    validator = RequestValidator(TOKEN)
    assert validator.compute_signature(url, params) == computed
    assert validator.validate(url, params, computed)
    assert not validator.validate(url, {**params, "DocumentRevision": "13"}, computed)
    assert not RequestValidator("another-token").validate(url, params, computed)


def test_each_event_type_has_twilios_parameters() -> None:
    created = from_entry(entry(e="document_created", n="todo", r="0", d='{"a":1}', w="alice", ep="EP1"))
    assert isinstance(created, Webhook)
    assert created.params(ACCOUNT) == {
        "AccountSid": ACCOUNT,
        "ServiceSid": SERVICE,
        "EventType": "document_created",
        "Identity": "alice",
        "EndpointId": "EP1",
        "DocumentSid": DOCUMENT,
        "DocumentUniqueName": "todo",
        "DocumentRevision": "0",
        "DocumentData": '{"a":1}',
    }
    # Revisions are decimal integers here (Twilio's word), where REST shows lowercase hex.
    updated = from_entry(entry(r="26", d="{}"))
    assert isinstance(updated, Webhook)
    assert updated.params(ACCOUNT)["DocumentRevision"] == "26"
    assert "EndpointId" not in updated.params(ACCOUNT)  # a REST change
    assert "DocumentUniqueName" not in updated.params(ACCOUNT)
    removed = from_entry(entry(e="document_removed", r="3"))
    assert isinstance(removed, Webhook)
    assert "DocumentData" not in removed.params(ACCOUNT)
    expired = from_entry(entry(e="document_removed"))  # the expiry sweep knows no revision
    assert isinstance(expired, Webhook)
    assert "DocumentRevision" not in expired.params(ACCOUNT)
    assert expired.params(ACCOUNT)["Identity"] == "system"


def test_the_token_and_the_date_come_from_the_entry() -> None:
    webhook = from_entry(entry())
    assert isinstance(webhook, Webhook)
    assert webhook.token == "p7-1733100000123-4"
    assert webhook.written_at == pytest.approx(1733100000.123)
    replayed = from_entry(entry(k="p7-1733000000000-0"))
    assert isinstance(replayed, Webhook)
    assert replayed.token == "p7-1733000000000-0"  # a replay keeps the original token


def test_a_lost_marker_and_a_foreign_entry() -> None:
    assert from_entry(Entry(1, "1-0", {"lost": "10000"})) == Dropped(10000)
    with pytest.raises(ValueError):
        from_entry(entry(e="list_item_added"))
    with pytest.raises(KeyError):
        from_entry(Entry(1, "1-0", {"e": "document_updated"}))


def test_a_waiting_webhook_survives_its_list_item() -> None:
    webhook = from_entry(entry(d='{"big":12345678901234567890123,"list":[]}', n="n", r="5", ep="EP"))
    assert isinstance(webhook, Webhook)
    waiting = Waiting(webhook, attempts=3, error="HTTP 503", dead_at=1733100100.5)
    assert decode_item(7, encode_item(waiting)) == waiting
    # The fields a replay appends decode to the same webhook, token included.
    again = from_entry(Entry(7, "1733200000000-0", webhook.fields()))
    assert isinstance(again, Webhook)
    assert (again.token, again.params(ACCOUNT)) == (webhook.token, webhook.params(ACCOUNT))


def test_the_request_is_the_same_on_every_attempt() -> None:
    sender = Sender(ACCOUNT, TOKEN, timeout=15, concurrency=4)
    webhook = from_entry(entry(u="https://user:secret@example.com/hook?q=1", d='{"a":1}'))
    assert isinstance(webhook, Webhook)
    body, headers = sender.request(webhook)
    assert sender.request(webhook) == (body, headers)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["I-Twilio-Idempotency-Token"] == webhook.token
    # Signed without the credentials: the receiver validates the URL it sees.
    url = "https://example.com/hook?q=1"
    assert signed_url(webhook.url) == url
    assert RequestValidator(TOKEN).validate(url, webhook.params(ACCOUNT), headers["X-Twilio-Signature"])
    assert describe(webhook.url) == "https://example.com/hook"
    assert "secret" not in describe(webhook.url)


def test_backoff_doubles_with_jitter_under_its_cap() -> None:
    policy = RetryPolicy(first_wait=1.0, max_wait=30.0, retry_for=3600)
    rng = random.Random(1)
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (60, 30.0)]:
        waits = [policy.wait(attempts, rng) for _ in range(200)]
        assert min(waits) >= ceiling / 2
        assert max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not in lockstep
    assert not policy.gave_up(1000.0, 1000.0 + 3599)
    assert policy.gave_up(1000.0, 1000.0 + 3600)


async def test_an_unusable_url_is_a_failed_attempt_not_a_crash() -> None:
    sender = Sender(ACCOUNT, TOKEN, timeout=2, concurrency=1)
    try:
        for url, error in [("http://[::1", "invalid URL"), ("http://127.0.0.1:9/refused", "cannot connect")]:
            webhook = from_entry(entry(u=url))
            assert isinstance(webhook, Webhook)
            async with sender.receiver(url).slot() as connection:
                outcome = await sender.send(connection, webhook)
            assert (outcome.delivered, outcome.status) == (False, None)
            assert outcome.error.startswith(error), outcome.error
    finally:
        await sender.aclose()
