"""Every Redis key and channel name the server uses, in one place.

The partitioned layout: a service's documents are spread over :data:`PARTITIONS` fixed partitions,
each with its own hash tag (:data:`TAGS`), so that on a Redis Cluster one service's documents lie on
every master while all keys one document operation touches share one slot. ``T`` is a partition's
tag, ``S`` a service SID, ``D`` a document SID:

    sync:{T}:s:S        hash    the partition's copy of the service: it exists while the service does
                                and holds what the scripts check (acl_enabled)
    sync:{T}:d:S:D      hash    one document (fields: see lua/_prelude.lua); Redis TTL = expiry
    sync:{T}:p:S:D      hash    the document's permissions: identity -> "rwm" flags ('1'/'0' each)
    sync:{T}:n:S        hash    unique name -> SID, for the documents that live in this partition
    sync:{T}:i:S        zset    SID scored by creation score (the service's listing index here)
    sync:{T}:q          string  the last creation score given out in this partition
    sync:{T}:x          zset    "S:D:name" scored by expiry time, every service of the partition
    sync:{T}:dead       set     "S:G" for each deleted service whose documents here are not purged
    sync:{T}:g:S:G:i    zset    a deleted service's listing index, renamed away for the purge
    sync:{T}:g:S:G:n    hash    its names hash, renamed with it
    sync:{T}:alias      hash    "S:name" -> partition, for migrated names that live elsewhere
    sync:{T}:c:D        channel the document's events (PUBLISH, or SPUBLISH on a cluster)
    sync:{T}:wh         stream  the webhook outbox: one entry per change of a service with a webhook,
                                appended by the write script itself; consumer group ``webhooks``
    sync:{T}:wl         string  the lease of the server process delivering the partition's webhooks
    sync:{T}:wb:S       list    service S's webhooks waiting for a retry here, oldest first
    sync:{T}:wbs        set     the services with such a backlog here
    sync:{T}:wd         list    webhooks given up on here (dead letters), oldest first
    sync:{S}:svc        hash    the service's settings (canonical)
    sync:{services}:index  zset   service SID scored by creation sequence
    sync:{services}:seq    string service creation counter
    sync:{services}:layout string the layout version of the store (see :data:`LAYOUT_VERSION`)
    sync:{services}:webhooks string set once every service's webhook is in its partition copies
    sync:{webhooks}:members  zset  the server processes delivering webhooks, scored by when they lapse

A document lives in the partition its SID names (``int(sid[2:4], 16) % PARTITIONS``). A new
document's SID is made to name the right partition (:func:`new_document_sid`): for a named
document the partition of its name (:func:`name_partition`), so that a lookup by name and one by SID
reach the same partition and the names hash that makes creation atomic; a random one otherwise.

A document migrated from the old layout kept its SID. If it is named and its name's partition is
not its SID's, it still lives in its SID's partition (so its channel is always found from its SID),
its name is in that partition's names hash, and the name's partition holds an alias entry that
sends a lookup by name there (``moved``): only such documents pay a second round trip.

Scripts get every key known in advance in KEYS. A few kinds of keys are derived inside scripts,
always with the partition's own tag and so in the slot of the declared keys: the document and
permission keys of a lookup by unique name (the SID is read from the names hash in the script) or
of a listing, a deleted service's renamed keys in the purge step of the sweep, an expired document's
service copy (for its webhook) in the sweep, and the services' backlogs counted by ``wh_size``.
"""

from __future__ import annotations

import secrets
import zlib

PARTITIONS = 64
"""Fixed forever: data is laid out by it."""
TAGS: tuple[str, ...] = (
    "p0.52", "p1.121", "p2.332", "p3.103", "p4.101", "p5.20", "p6.2", "p7.71",
    "p8.372", "p9.33", "p10.68", "p11.41", "p12.158", "p13.29", "p14.33", "p15.163",
    "p16.23", "p17.100", "p18.21", "p19.148", "p20.142", "p21.42", "p22.160", "p23.13",
    "p24.49", "p25.60", "p26.18", "p27.31", "p28.23", "p29.148", "p30.69", "p31.40",
    "p32.170", "p33.52", "p34.48", "p35.61", "p36.20", "p37.150", "p38.22", "p39.118",
    "p40.60", "p41.49", "p42.31", "p43.18", "p44.101", "p45.12", "p46.123", "p47.43",
    "p48.29", "p49.142", "p50.63", "p51.173", "p52.8", "p53.22", "p54.38", "p55.11",
    "p56.9", "p57.159", "p58.179", "p59.111", "p60.61", "p61.48", "p62.1", "p63.19",
)  # fmt: skip
"""Partition p's hash tag: the first ``f"p{p}.{n}"`` (n = 0, 1, …) whose cluster slot lies in
``[p * 256, (p + 1) * 256)``, so partitions spread evenly over masters that split the slots in ranges.
Pasted, not computed at import: data depends on these strings, which must never change."""

SERVICE_INDEX = "sync:{services}:index"
SERVICE_SEQ = "sync:{services}:seq"
LAYOUT = "sync:{services}:layout"
WEBHOOK_COPIES = "sync:{services}:webhooks"
"""Set once the webhook settings of every service are in its partition copies (services written by a
version without webhooks have none there): see ``RedisStore.copy_webhook_settings``."""
WEBHOOK_MEMBERS = "sync:{webhooks}:members"
LAYOUT_VERSION = "2"
"""Written by a store that starts empty and by ``sync-server migrate``; absent in a store of the
first layout (all of a service's keys under ``{IS…}``)."""


def sid_partition(document_sid: str) -> int:
    return int(document_sid[2:4], 16) % PARTITIONS


def name_partition(service_sid: str, unique_name: str) -> int:
    return zlib.crc32(f"{service_sid}\0{unique_name}".encode()) % PARTITIONS


def new_document_sid(service_sid: str, unique_name: str | None) -> str:
    partition = name_partition(service_sid, unique_name) if unique_name else secrets.randbelow(PARTITIONS)
    return "ET" + format(partition, "02x") + secrets.token_hex(15)


PREFIXES: tuple[str, ...] = tuple(f"sync:{{{tag}}}:" for tag in TAGS)
"""Partition p's key prefix, ``sync:{T}:`` (built once: every store call names several keys)."""


def prefix(partition: int) -> str:
    return PREFIXES[partition]


def service_copy(partition: int, service_sid: str) -> str:
    return f"{PREFIXES[partition]}s:{service_sid}"


def names(partition: int, service_sid: str) -> str:
    return f"{PREFIXES[partition]}n:{service_sid}"


def index(partition: int, service_sid: str) -> str:
    return f"{PREFIXES[partition]}i:{service_sid}"


def last_score(partition: int) -> str:
    return f"{PREFIXES[partition]}q"


def expiry(partition: int) -> str:
    return f"{PREFIXES[partition]}x"


def dead(partition: int) -> str:
    return f"{PREFIXES[partition]}dead"


def alias(partition: int) -> str:
    return f"{PREFIXES[partition]}alias"


def outbox(partition: int) -> str:
    return f"{prefix(partition)}wh"


def outbox_lease(partition: int) -> str:
    return f"{prefix(partition)}wl"


def outbox_backlog(partition: int, service_sid: str) -> str:
    return f"{prefix(partition)}wb:{service_sid}"


def outbox_backlogged(partition: int) -> str:
    return f"{prefix(partition)}wbs"


def dead_letters(partition: int) -> str:
    return f"{prefix(partition)}wd"


def graveyard(partition: int, service_sid: str, generation: str) -> tuple[str, str]:
    """A deleted service's index and names hash in one partition, renamed away for the purge."""
    base = f"{prefix(partition)}g:{service_sid}:{generation}:"
    return base + "i", base + "n"


def document_key(service_sid: str, document_sid: str) -> str:
    return f"{PREFIXES[sid_partition(document_sid)]}d:{service_sid}:{document_sid}"


def permission_key(service_sid: str, document_sid: str) -> str:
    return f"{PREFIXES[sid_partition(document_sid)]}p:{service_sid}:{document_sid}"


def document_channel(service_sid: str, document_sid: str) -> str:
    """The channel of a document's events (the service is not part of it: SIDs are unique)."""
    del service_sid
    return f"{PREFIXES[sid_partition(document_sid)]}c:{document_sid}"


def service_key(service_sid: str) -> str:
    return f"sync:{{{service_sid}}}:svc"


def document_script_keys(partition: int, service_sid: str, document_sid: str | None) -> list[str]:
    """KEYS of the document scripts (the header of lua/_prelude.lua): the partition's keys, and the
    document's too when its SID is known."""
    found = [
        service_copy(partition, service_sid),
        names(partition, service_sid),
        index(partition, service_sid),
        expiry(partition),
        last_score(partition),
        alias(partition),
        outbox(partition),
    ]
    if document_sid is not None:
        found += [document_key(service_sid, document_sid), permission_key(service_sid, document_sid)]
    return found


def cursor(score: int, partition: int) -> int:
    """A listing cursor: unique across partitions, ordered like (score, partition)."""
    return score * PARTITIONS + partition


def split_cursor(value: int) -> tuple[int, int]:
    return divmod(value, PARTITIONS)


class Legacy:
    """Names of the first layout (every key of a service under ``{IS…}``), read by the migration."""

    @staticmethod
    def prefix(service_sid: str) -> str:
        return f"sync:{{{service_sid}}}:"

    @staticmethod
    def docs(service_sid: str) -> str:
        return f"sync:{{{service_sid}}}:docs"

    @staticmethod
    def names(service_sid: str) -> str:
        return f"sync:{{{service_sid}}}:names"

    @staticmethod
    def expiry(service_sid: str) -> str:
        return f"sync:{{{service_sid}}}:expiry"

    @staticmethod
    def document(service_sid: str, document_sid: str) -> str:
        return f"sync:{{{service_sid}}}:doc:{document_sid}"

    @staticmethod
    def permissions(service_sid: str, document_sid: str) -> str:
        return f"sync:{{{service_sid}}}:perm:{document_sid}"
