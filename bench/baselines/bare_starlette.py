"""REST baseline: the HTTP layer's ceiling, a Starlette endpoint doing a document update's HTTP work
without Redis.

``POST /v1/Services/{service}/Documents/{doc}`` checks Basic credentials, reads the form body with the
same strict ``parse_qs`` the server uses, parses and re-encodes ``Data`` with orjson, bumps an
in-memory revision (per worker; ``If-Match`` is parsed but not enforced) and answers the document
JSON in Twilio's shape with an ``ETag``. The gap between this and the sync server is what the store
call and the server's own code cost.

    uvicorn bench.baselines.bare_starlette:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from urllib.parse import parse_qs

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCOUNT_SID = os.environ.get("SYNC_ACCOUNT_SID", "AC" + "0" * 32)
EXPECTED_AUTH = (
    "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{os.environ.get('SYNC_AUTH_TOKEN', '')}".encode()).decode()
)
revisions: dict[str, int] = {}


def _error(status: int, code: int, message: str) -> Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Response(orjson.dumps(body), status, media_type="application/json")


async def update_document(request: Request) -> Response:
    if request.headers.get("authorization") != EXPECTED_AUTH:
        return _error(401, 20003, "Authenticate")
    if_match = request.headers.get("if-match")
    if if_match is not None and not if_match.strip('"').isalnum():
        return _error(400, 54003, "Invalid If-Match")
    try:
        fields = parse_qs((await request.body()).decode(), keep_blank_values=True, errors="strict")
        data = orjson.loads(fields["Data"][-1])
    except (UnicodeDecodeError, KeyError, orjson.JSONDecodeError):
        return _error(400, 20001, "Invalid Data")
    if not isinstance(data, dict):
        return _error(400, 54101, "Invalid data")
    encoded = orjson.dumps(data)
    name = request.path_params["doc"]
    revision = revisions[name] = revisions.get(name, 0) + 1
    service = request.path_params["service"]
    sid = "ET" + hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
    url = f"http://{request.headers.get('host')}/v1/Services/{service}/Documents/{sid}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "sid": sid,
        "unique_name": name,
        "account_sid": ACCOUNT_SID,
        "service_sid": service,
        "url": url,
        "links": {"permissions": url + "/Permissions"},
        "revision": format(revision, "x"),
        "data": orjson.Fragment(encoded),
        "date_expires": None,
        "date_created": stamp,
        "date_updated": stamp,
        "created_by": "system",
    }
    return Response(
        orjson.dumps(document), 200, {"ETag": format(revision, "x")}, media_type="application/json"
    )


app = Starlette(routes=[Route("/v1/Services/{service}/Documents/{doc}", update_document, methods=["POST"])])
