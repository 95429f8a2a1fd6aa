"""Every Redis key and channel name the server uses, in one place.

All keys of one service share the hash tag ``{IS…}`` so that each Lua script touches a single
cluster slot; the service is the unit of sharding. The Lua scripts receive the service's key
*prefix* and derive the per-document names from it with the same suffixes as below.

    sync:{IS…}:svc            hash    the service's settings; field q counts document creations
    sync:{IS…}:doc:ET…        hash    one document (fields: see lua/_prelude.lua); Redis TTL = expiry
    sync:{IS…}:names          hash    unique name -> document SID
    sync:{IS…}:docs           zset    document SID scored by creation sequence (paging index)
    sync:{IS…}:expiry         zset    "SID:unique name" scored by expiry time (sweeper index)
    sync:{IS…}:perm:ET…       hash    identity -> "rwm" flags ('1'/'0' each)
    sync:{IS…}:ch:ET…         channel events of one document (PUBLISHed by the write scripts)
    sync:{services}:index     zset    service SID scored by creation sequence
    sync:{services}:seq       string  service creation counter
"""

from __future__ import annotations

SERVICE_INDEX = "sync:{services}:index"
SERVICE_SEQ = "sync:{services}:seq"


def service_prefix(service_sid: str) -> str:
    return f"sync:{{{service_sid}}}:"


def service_key(service_sid: str) -> str:
    return f"sync:{{{service_sid}}}:svc"


def document_key(service_sid: str, document_sid: str) -> str:
    return f"sync:{{{service_sid}}}:doc:{document_sid}"


def document_channel(service_sid: str, document_sid: str) -> str:
    return f"sync:{{{service_sid}}}:ch:{document_sid}"
