"""Webhooks: every change of a document of a service with a ``webhook_url`` reaches that URL, as the
form POST Twilio Sync sends, signed, at least once, across crashes.

The parts, from the write to the receiver:

- ``store/lua/``: the write script itself appends the webhook to its partition's outbox stream (so a
  change and its webhook are one atomic step); ``store/webhook_outbox.py`` is the Redis side of
  everything below, behind the :class:`~sync_server.webhooks.outbox.Outbox` contract;
- :mod:`.deliverer`: which server process delivers which partitions (a lease each, shared fairly),
  reading new entries on a dedicated connection and taking over those of a process that died;
- :mod:`.lanes`: per partition and service, the webhooks of each document one after another, in
  revision order; failures move to a backlog in Redis, retried with backoff, then dead letters;
- :mod:`.sender`: the HTTP side (httpx, one connection pool and a bounded number of requests per
  receiver), :mod:`.signature` (``X-Twilio-Signature``), :mod:`.events` (the form and the encodings),
  :mod:`.retry` (the waits between attempts).

None of these modules talks to Redis or imports the store: tests/test_architecture.py pins it.
"""
