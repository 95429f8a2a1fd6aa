"""The OpenAPI 3.1 description of what this server serves over HTTP, at ``GET /openapi.json``.

The document is assembled here from the constants the handlers themselves check (sizes, ranges,
page sizes, error codes), so a limit changed in code changes in the description too. Paths, form
fields and JSON fields are Twilio's (the official ``twilio_sync_v1`` description, whose component
and operation names are kept so the two can be compared); what differs is what this server
decided where Twilio's behaviour is unknown, and every error it can answer, with its codes.

tests/test_openapi.py keeps it true: it drives the app through every route and validates each real
response against this document, and it checks that the paths and methods here are exactly the
router's (``rest/api.py`` ``ROUTES``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sync_server import errors
from sync_server.rest.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from sync_server.rest.requests import FORM
from sync_server.validation import MAX_DATA_BYTES, MAX_IDENTITY, MAX_TTL, MAX_UNIQUE_NAME

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

# Twilio's names for its components, so this document diffs cleanly against the official one.
SERVICE = "sync.v1.service"
DOCUMENT = "sync.v1.service.document"
PERMISSION = "sync.v1.service.document.document_permission"
BASIC = "accountSid_authToken"

_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
_REVISION = r"^[0-9a-f]{1,16}$"
# Any SID-shaped name, whatever its prefix (ids.SID_SHAPE): never a valid unique name.
_SID_SHAPE = r"^[A-Z]{2}[0-9a-f]{32}$"
# What handlers._is_http_url accepts (its scheme is compared lowercased), or empty to clear it.
_WEBHOOK_URL = r"^([Hh][Tt][Tt][Pp][Ss]?://[^/?#]+.*)?$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _sid(prefix: str, what: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^{prefix}[0-9a-f]{{32}}$", "description": what}


def _date(what: str, *, nullable: bool = False) -> dict[str, Any]:
    return {
        "type": ["string", "null"] if nullable else "string",
        "format": "date-time",
        "pattern": _DATE,
        "description": f"{what}, UTC, exactly `YYYY-MM-DDTHH:MM:SSZ` (no fractions).",
    }


def _url(what: str) -> dict[str, Any]:
    return {"type": "string", "format": "uri", "description": what}


def _record(properties: dict[str, Any], description: str) -> dict[str, Any]:
    """An object with exactly these fields: every one is always present, and nothing else is."""
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _links(*names: str, description: str) -> dict[str, Any]:
    return _record({name: {"type": "string", "format": "uri"} for name in names}, description)


# -- resources ------------------------------------------------------------------------------------


def _service_schema() -> dict[str, Any]:
    return _record(
        {
            "sid": _sid("IS", "The service's SID."),
            "unique_name": {
                "type": ["string", "null"],
                "description": "`default` for the account's default service, null for the others "
                "(it cannot be set over REST, as on Twilio).",
            },
            "account_sid": _sid("AC", "The account's SID."),
            "friendly_name": {"type": ["string", "null"], "maxLength": 256},
            "date_created": _date("When the service was created"),
            "date_updated": _date("When the service was last updated"),
            "url": _url("The absolute URL of the service."),
            "webhook_url": {"type": ["string", "null"], "format": "uri"},
            "webhooks_from_rest_enabled": {"type": "boolean"},
            "reachability_webhooks_enabled": {"type": "boolean"},
            "acl_enabled": {
                "type": "boolean",
                "description": "When true, clients with access tokens may only do what the document "
                "permissions grant their identity; REST is never restricted.",
            },
            "reachability_debouncing_enabled": {"type": "boolean"},
            "reachability_debouncing_window": {
                "type": "integer",
                "minimum": 1000,
                "maximum": 30000,
                "description": "Milliseconds; 5000 unless set.",
            },
            "links": _links(
                "documents",
                "lists",
                "maps",
                "streams",
                description="Related resources. This server serves Documents only: the Lists, Maps "
                "and Streams URLs answer 404.",
            ),
        },
        "A Sync service: the container of documents, with its settings.",
    )


def _document_schema() -> dict[str, Any]:
    return _record(
        {
            "sid": _sid("ET", "The document's SID."),
            "unique_name": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_UNIQUE_NAME,
                "description": "The name given at creation, usable in place of the SID in paths.",
            },
            "account_sid": _sid("AC", "The account's SID."),
            "service_sid": _sid("IS", "The SID of the document's service."),
            "url": _url("The absolute URL of the document."),
            "links": _links("permissions", description="The document's permissions."),
            "revision": {
                "type": "string",
                "pattern": _REVISION,
                "description": 'A lowercase hex counter: `"0"` at creation, one more on every write '
                "that changes the data (a `Ttl`-only update keeps it). Equal to the `ETag` header.",
            },
            "data": {
                "type": "object",
                "description": f"The document's JSON object, at most {MAX_DATA_BYTES} bytes as compact "
                "UTF-8 JSON.",
            },
            "date_expires": _date("When the document expires, or null if it never does", nullable=True),
            "date_created": _date("When the document was created"),
            "date_updated": _date("When the document's data last changed"),
            "created_by": {
                "type": "string",
                "description": "`system` for REST, else the identity of the client that created it.",
            },
        },
        "A Sync document.",
    )


def _permission_schema() -> dict[str, Any]:
    return _record(
        {
            "account_sid": _sid("AC", "The account's SID."),
            "service_sid": _sid("IS", "The SID of the document's service."),
            "document_sid": _sid("ET", "The document's SID."),
            "identity": {"type": "string", "minLength": 1, "maxLength": MAX_IDENTITY},
            "read": {"type": "boolean", "description": "May open, fetch and subscribe to the document."},
            "write": {"type": "boolean", "description": "May set and update the document and its TTL."},
            "manage": {"type": "boolean", "description": "May remove the document."},
            "url": _url("The absolute URL of this permission (the identity percent-encoded)."),
        },
        "What one identity may do with one document when the service has `acl_enabled`.",
    )


def _meta_schema() -> dict[str, Any]:
    page_url = {"type": ["string", "null"], "format": "uri"}
    return _record(
        {
            "first_page_url": _url("The first page, with `PageSize` and `Page=0`."),
            "key": {"type": "string", "description": "The name of the list's field in this body."},
            "next_page_url": {
                **page_url,
                "description": "The next page (follow it verbatim: it carries the cursor), or null "
                "on the last page.",
            },
            "page": {"type": "integer", "minimum": 0, "description": "The `Page` asked for, echoed."},
            "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            "previous_page_url": {**page_url, "description": "The previous page, or null."},
            "url": _url("This page."),
        },
        "Twilio's paging envelope.",
    )


def _list_schema(key: str, item: str, title: str) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "properties": {
            key: {"type": "array", "items": _schema(item), "maxItems": MAX_PAGE_SIZE},
            "meta": {
                "allOf": [_schema("meta")],
                "properties": {"key": {"const": key}},
            },
        },
        "required": [key, "meta"],
        "additionalProperties": False,
    }


def _error_schema() -> dict[str, Any]:
    return _record(
        {
            "code": {"type": "integer", "description": "The Twilio error code."},
            "message": {"type": "string"},
            "more_info": {
                "type": "string",
                "format": "uri",
                "pattern": r"^https://www\.twilio\.com/docs/errors/[0-9]+$",
            },
            "status": {"type": "integer", "description": "The HTTP status, repeated."},
        },
        "Twilio's error body. It never has both `type` and `title` (twilio-python would then read it "
        "as RFC 9457).",
    )


def _health_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "detail": {"type": "string"},
        },
        "required": ["status"],
        "additionalProperties": False,
    }


# -- responses ------------------------------------------------------------------------------------


def _error(
    description: str, status: int, *codes: int, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An error response: Twilio's body, with the HTTP status and the codes this answer can carry."""
    response: dict[str, Any] = {
        "description": description,
        "content": {
            JSON: {
                "schema": {
                    "allOf": [_schema("error")],
                    "properties": {
                        "code": {"enum": sorted(set(codes))} if len(set(codes)) > 1 else {"const": codes[0]},
                        "status": {"const": status},
                    },
                }
            }
        },
    }
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"description": description, "required": True, "schema": schema}


_REQUEST_ID = "Twilio-Request-Id"
# Answered by the HTTP protocol before the app sees the request: no request id.
_BEFORE_THE_APP = ("RequestTargetTooLarge", "RequestHeadTooLarge")

_ETAG = {"ETag": _header("The document's revision (unquoted), as in `revision`.", _REVISION)}


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _with_request_ids(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the request id header declared on every response the app answers: the
    shared ones (but those answered before it) and every one written inline in an operation."""
    ref = _ref("headers", _REQUEST_ID)
    shared = document["components"]["responses"]
    responses = [response for name, response in shared.items() if name not in _BEFORE_THE_APP]
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                responses += [r for r in operation["responses"].values() if "$ref" not in r]
    for response in responses:
        response["headers"] = {**response.get("headers", {}), _REQUEST_ID: ref}
    return document


def _shared_responses(max_body_bytes: int) -> dict[str, Any]:
    return {
        "Unauthorized": _error(
            "No credentials, or not the account's (`AccountSid:AuthToken` or `ApiKeySid:ApiKeySecret`). "
            "Checked before anything else, so an unauthenticated caller learns nothing about paths.",
            401,
            errors.AuthenticationError.code,
            headers={"WWW-Authenticate": _header('Always `Basic realm="Sync API"`.')},
        ),
        "BodyTooLarge": _error(
            f"The request body is over {max_body_bytes} bytes (`SYNC_MAX_BODY_BYTES`; refused before it "
            f"is read), or the document data is over {MAX_DATA_BYTES} bytes as compact JSON.",
            413,
            errors.DataTooLarge.code,
        ),
        "UnsupportedMediaType": _error(
            f"A non-empty body that is not `{FORM}` (JSON, multipart, or no type). An empty body needs "
            "no type.",
            415,
            errors.UnsupportedMediaType.code,
        ),
        "Unavailable": _error(
            "Redis cannot be reached; try again.",
            503,
            errors.UnavailableError.code,
        ),
        "InternalError": _error(
            "A server bug (it is logged); the body has no traceback.",
            500,
            errors.SyncError.code,
        ),
        "RequestTargetTooLarge": _error(
            "The request line is over `SYNC_MAX_REQUEST_LINE_BYTES`; answered before routing, and the "
            "connection is closed.",
            414,
            errors.RequestHeadTooLarge.code,
        ),
        "RequestHeadTooLarge": _error(
            "The request line and headers are over `SYNC_MAX_HEADER_BYTES`; answered before routing, "
            "and the connection is closed.",
            431,
            errors.RequestHeadTooLarge.code,
        ),
        "MethodNotAllowed": _error(
            "A path this server serves, with a method it does not serve there (this description "
            "lists every method each path has; any other gets this answer).",
            405,
            errors.MethodNotAllowed.code,
            headers={"Allow": _header("The path's methods, e.g. `GET, POST, DELETE`.")},
        ),
        "NotFound": _error(
            "No such path (under `/v1`, or anywhere else).",
            404,
            errors.NotFoundError.code,
        ),
    }


def _responses(
    ok: dict[str, dict[str, Any]], *, body: bool = False, **errs: dict[str, Any]
) -> dict[str, Any]:
    """The responses of a ``/v1`` operation: ``ok``, its own errors by status (``e404=...``), then the
    ones every such operation can give (and 413/415 where it reads a ``body``)."""
    out: dict[str, Any] = dict(ok)
    out.update({status.removeprefix("e"): response for status, response in errs.items()})
    out["401"] = _ref("responses", "Unauthorized")
    if body:
        out["413"] = _ref("responses", "BodyTooLarge")
        out["415"] = _ref("responses", "UnsupportedMediaType")
    out["414"] = _ref("responses", "RequestTargetTooLarge")
    out["431"] = _ref("responses", "RequestHeadTooLarge")
    out["500"] = _ref("responses", "InternalError")
    out["503"] = _ref("responses", "Unavailable")
    return dict(sorted(out.items()))


_SERVICE_NOT_FOUND = errors.ServiceNotFound.code
_DOCUMENT_NOT_FOUND = errors.DocumentNotFound.code
_PERMISSION_NOT_FOUND = errors.PermissionNotFound.code
_PAGING_CODES = (errors.INVALID_PAGE_SIZE, errors.INVALID_PAGE_TOKEN, errors.INVALID_PARAMETER)
_DATA_CODES = (errors.INVALID_JSON, errors.INVALID_DATA, errors.INVALID_TTL)


# -- request bodies -------------------------------------------------------------------------------


def _form(
    title: str,
    properties: dict[str, Any],
    *,
    body_required: bool = False,
    fields_required: tuple[str, ...] = (),
    **schema: Any,
) -> dict[str, Any]:
    """A form body. Fields this server does not read are ignored (as on Twilio), hence open objects."""
    body_schema: dict[str, Any] = {"title": title, "type": "object", "properties": properties, **schema}
    if fields_required:
        body_schema["required"] = list(fields_required)
    return {"required": body_required, "content": {FORM: {"schema": body_schema}}}


def _boolean(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": f"{description} `true` or `false` (any case)."}


def _service_form(title: str) -> dict[str, Any]:
    return _form(
        title,
        {
            "FriendlyName": {"type": "string", "maxLength": 256},
            "WebhookUrl": {
                "type": "string",
                "pattern": _WEBHOOK_URL,
                "description": "An absolute http or https URL; empty clears it.",
            },
            "ReachabilityWebhooksEnabled": _boolean("Stored and echoed."),
            "AclEnabled": _boolean("Whether document permissions restrict clients with access tokens."),
            "ReachabilityDebouncingEnabled": _boolean("Stored and echoed."),
            "ReachabilityDebouncingWindow": {
                "type": "integer",
                "minimum": 1000,
                "maximum": 30000,
                "description": "Milliseconds.",
            },
            "WebhooksFromRestEnabled": _boolean("Stored and echoed."),
        },
    )


def _data_field(omitted: str = "") -> dict[str, Any]:
    return {
        "type": "string",
        "description": f"The document's data: the text of a JSON object, at most {MAX_DATA_BYTES} bytes "
        f"once compacted (54006 / 413 beyond). Not JSON: 54008; JSON but not an object: 54101.{omitted}",
    }


def _ttl_field(omitted: str = "") -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_TTL,
        "description": f"Seconds until the document expires; 0 removes an expiry. Else 54011.{omitted}",
    }


# -- parameters -----------------------------------------------------------------------------------


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _parameters() -> dict[str, Any]:
    return {
        "PageSize": {
            "name": "PageSize",
            "in": "query",
            "description": f"Items per page, {DEFAULT_PAGE_SIZE} unless given (else 54454).",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        },
        "Page": {
            "name": "Page",
            "in": "query",
            "description": "The page number, for the client's own count: echoed in `meta`, it does not "
            "move the cursor.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "PageToken": {
            "name": "PageToken",
            "in": "query",
            "description": "The opaque cursor of a `next_page_url` / `previous_page_url` (else 54453).",
            "schema": {"type": "string"},
        },
        "ServiceSid": _path(
            "ServiceSid", "The service's SID, or `default` for the account's default service."
        ),
        "DocumentSid": _path(
            "DocumentSid",
            "The document's SID or unique name (percent-encode a `/` in a name as `%2F`).",
        ),
        "Identity": _path("Identity", f"The identity, 1 to {MAX_IDENTITY} characters (else 54351)."),
    }


_PAGING = [_ref("parameters", "PageSize"), _ref("parameters", "Page"), _ref("parameters", "PageToken")]


# -- paths ----------------------------------------------------------------------------------------


def _services_paths() -> dict[str, Any]:
    service_sid = _path("Sid", "The service's SID, or `default` for the account's default service.")
    invalid_setting = _error(
        "A setting out of range (`FriendlyName` over 256 characters, `WebhookUrl` not an http(s) URL, a "
        "boolean that is not true/false, `ReachabilityDebouncingWindow` outside 1000-30000), or a body "
        "that is not UTF-8.",
        400,
        errors.INVALID_PARAMETER,
    )
    not_found = _error("No such service.", 404, _SERVICE_NOT_FOUND)
    tags = ["SyncV1Service"]
    return {
        "/v1/Services": {
            "post": {
                "operationId": "CreateService",
                "tags": tags,
                "summary": "Create a service",
                "requestBody": _service_form("CreateServiceRequest"),
                "responses": _responses(
                    {"201": _json("Created", _schema(SERVICE))}, body=True, e400=invalid_setting
                ),
            },
            "get": {
                "operationId": "ListService",
                "tags": tags,
                "summary": "List the account's services, in creation order",
                "parameters": _PAGING,
                "responses": _responses(
                    {"200": _json("OK", _schema("ListServiceResponse"))},
                    e400=_error("Invalid PageSize, Page or PageToken.", 400, *_PAGING_CODES),
                ),
            },
        },
        "/v1/Services/{Sid}": {
            "parameters": [service_sid],
            "get": {
                "operationId": "FetchService",
                "tags": tags,
                "summary": "Fetch a service",
                "responses": _responses({"200": _json("OK", _schema(SERVICE))}, e404=not_found),
            },
            "post": {
                "operationId": "UpdateService",
                "tags": tags,
                "summary": "Update a service's settings (only the fields sent change)",
                "requestBody": _service_form("UpdateServiceRequest"),
                "responses": _responses(
                    {"200": _json("OK", _schema(SERVICE))}, body=True, e400=invalid_setting, e404=not_found
                ),
            },
            "delete": {
                "operationId": "DeleteService",
                "tags": tags,
                "summary": "Delete a service and all its documents",
                "responses": _responses({"204": {"description": "Deleted."}}, e404=not_found),
            },
        },
    }


def _documents_paths() -> dict[str, Any]:
    tags = ["SyncV1Document"]
    sid = _path("Sid", "The document's SID or unique name (percent-encode a `/` in a name as `%2F`).")
    missing = _error(
        "No such document (20404, as Twilio's REST answers), or no such service (54050). An expired "
        "document is gone at once.",
        404,
        _DOCUMENT_NOT_FOUND,
        _SERVICE_NOT_FOUND,
    )
    return {
        "/v1/Services/{ServiceSid}/Documents": {
            "parameters": [_ref("parameters", "ServiceSid")],
            "post": {
                "operationId": "CreateDocument",
                "tags": tags,
                "summary": "Create a document",
                "requestBody": _form(
                    "CreateDocumentRequest",
                    {
                        "UniqueName": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_UNIQUE_NAME,
                            "not": {"pattern": _SID_SHAPE},
                            "description": f"1 to {MAX_UNIQUE_NAME} characters, not shaped like a SID "
                            "(else 54302). Optional.",
                        },
                        "Data": _data_field(" `{}` if omitted."),
                        "Ttl": _ttl_field(" No expiry if omitted."),
                    },
                ),
                "responses": _responses(
                    {"201": _json('Created; `revision` is `"0"`.', _schema(DOCUMENT), _ETAG)},
                    body=True,
                    e400=_error(
                        "Invalid Data (54008, 54101), Ttl (54011) or UniqueName (54302), or a body "
                        "that is not UTF-8 (20001).",
                        400,
                        *_DATA_CODES,
                        errors.INVALID_UNIQUE_NAME,
                        errors.INVALID_PARAMETER,
                    ),
                    e404=_error("No such service.", 404, _SERVICE_NOT_FOUND),
                    e409=_error(
                        "A document with this unique name exists.", 409, errors.UniqueNameConflict.code
                    ),
                ),
            },
            "get": {
                "operationId": "ListDocument",
                "tags": tags,
                "summary": "List documents in creation order, by cursor",
                "description": "Following `next_page_url` visits every document that exists for the "
                "whole walk exactly once, even while others are created and deleted.",
                "parameters": _PAGING,
                "responses": _responses(
                    {"200": _json("OK", _schema("ListDocumentResponse"))},
                    e400=_error("Invalid PageSize, Page or PageToken.", 400, *_PAGING_CODES),
                    e404=_error("No such service.", 404, _SERVICE_NOT_FOUND),
                ),
            },
        },
        "/v1/Services/{ServiceSid}/Documents/{Sid}": {
            "parameters": [_ref("parameters", "ServiceSid"), sid],
            "get": {
                "operationId": "FetchDocument",
                "tags": tags,
                "summary": "Fetch a document by SID or unique name",
                "responses": _responses({"200": _json("OK", _schema(DOCUMENT), _ETAG)}, e404=missing),
            },
            "post": {
                "operationId": "UpdateDocument",
                "tags": tags,
                "summary": "Replace a document's data and/or change its expiry",
                "description": "`Ttl` alone changes only the expiry: revision, data and `date_updated` "
                "stay, and subscribers get no event. An update without `Ttl` keeps the expiry.",
                "parameters": [
                    {
                        "name": "If-Match",
                        "in": "header",
                        "description": "Write only if the document is at this revision (else 412 / "
                        '54103). Quoted (`"1a"`), weak (`W/"1a"`) or bare (`1a`); anything else is '
                        "400 / 54003.",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": _form(
                    "UpdateDocumentRequest",
                    {"Data": _data_field(), "Ttl": _ttl_field(" The expiry stays if omitted.")},
                    body_required=True,
                    anyOf=[{"required": ["Data"]}, {"required": ["Ttl"]}],
                ),
                "responses": _responses(
                    {"200": _json("OK", _schema(DOCUMENT), _ETAG)},
                    body=True,
                    e400=_error(
                        "Invalid Data (54008, 54101), Ttl (54011) or If-Match (54003); neither Data nor "
                        "Ttl given, or a body that is not UTF-8 (20001).",
                        400,
                        *_DATA_CODES,
                        errors.INVALID_IF_MATCH,
                        errors.INVALID_PARAMETER,
                    ),
                    e404=missing,
                    e412=_error(
                        "`If-Match` names another revision than the document's.",
                        412,
                        errors.RevisionMismatch.code,
                    ),
                ),
            },
            "delete": {
                "operationId": "DeleteDocument",
                "tags": tags,
                "summary": "Delete a document (no If-Match, as on Twilio since 2021)",
                "responses": _responses({"204": {"description": "Deleted."}}, e404=missing),
            },
        },
    }


def _permissions_paths() -> dict[str, Any]:
    tags = ["SyncV1DocumentPermission"]
    document = _error(
        "No such document (20404) or service (54050).", 404, _DOCUMENT_NOT_FOUND, _SERVICE_NOT_FOUND
    )
    permission = _error(
        "No such permission (54354), document (20404) or service (54050).",
        404,
        _PERMISSION_NOT_FOUND,
        _DOCUMENT_NOT_FOUND,
        _SERVICE_NOT_FOUND,
    )
    bad_identity = _error("Invalid identity.", 400, errors.INVALID_IDENTITY)
    params = [_ref("parameters", "ServiceSid"), _ref("parameters", "DocumentSid")]
    flag = "Required. `true` or `false` (any case)."
    return {
        "/v1/Services/{ServiceSid}/Documents/{DocumentSid}/Permissions": {
            "parameters": params,
            "get": {
                "operationId": "ListDocumentPermission",
                "tags": tags,
                "summary": "List a document's permissions, by identity",
                "description": "Pages by `Page` (permissions are few per document): `next_page_url` "
                "carries `Page`+1 and no token.",
                "parameters": _PAGING,
                "responses": _responses(
                    {"200": _json("OK", _schema("ListDocumentPermissionResponse"))},
                    e400=_error("Invalid PageSize, Page or PageToken.", 400, *_PAGING_CODES),
                    e404=document,
                ),
            },
        },
        "/v1/Services/{ServiceSid}/Documents/{DocumentSid}/Permissions/{Identity}": {
            "parameters": [*params, _ref("parameters", "Identity")],
            "get": {
                "operationId": "FetchDocumentPermission",
                "tags": tags,
                "summary": "Fetch one identity's permission",
                "responses": _responses(
                    {"200": _json("OK", _schema(PERMISSION))}, e400=bad_identity, e404=permission
                ),
            },
            "post": {
                "operationId": "UpdateDocumentPermission",
                "tags": tags,
                "summary": "Create or replace one identity's permission (an upsert)",
                "description": "Taking `Read` away ends that identity's subscriptions to the document "
                "on every server process.",
                "requestBody": _form(
                    "UpdateDocumentPermissionRequest",
                    {
                        "Read": {"type": "boolean", "description": flag},
                        "Write": {"type": "boolean", "description": flag},
                        "Manage": {"type": "boolean", "description": flag},
                    },
                    body_required=True,
                    fields_required=("Read", "Write", "Manage"),
                ),
                "responses": _responses(
                    {"200": _json("OK", _schema(PERMISSION))},
                    body=True,
                    e400=_error(
                        "A missing or non-boolean Read, Write or Manage (20001), an invalid identity "
                        "(54351), or a body that is not UTF-8 (20001).",
                        400,
                        errors.INVALID_PARAMETER,
                        errors.INVALID_IDENTITY,
                    ),
                    e404=document,
                ),
            },
            "delete": {
                "operationId": "DeleteDocumentPermission",
                "tags": tags,
                "summary": "Delete one identity's permission",
                "responses": _responses(
                    {"204": {"description": "Deleted."}}, e400=bad_identity, e404=permission
                ),
            },
        },
    }


def _metrics_path() -> dict[str, Any]:
    return {
        "/metrics": {
            "get": {
                "operationId": "FetchMetrics",
                "tags": ["Operations"],
                "summary": "Prometheus metrics of this server (all its workers)",
                "description": "Prometheus text exposition format. Needs the account's Basic credentials "
                "when `SYNC_METRICS_AUTH` says so: `auto` (the default) when the server listens beyond "
                "loopback, `always`, or `never`. Absent (404) with `SYNC_METRICS=off`.",
                # Optional: which of the two holds is the server's setting.
                "security": [{}, {BASIC: []}],
                "responses": {
                    "200": {
                        "description": "The metrics, merged over the server's workers, in the format "
                        "`Accept` asks for: Prometheus text (0.0.4 by default) or OpenMetrics.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    "401": _ref("responses", "Unauthorized"),
                    "414": _ref("responses", "RequestTargetTooLarge"),
                    "431": _ref("responses", "RequestHeadTooLarge"),
                },
            },
        },
    }


def _public_paths() -> dict[str, Any]:
    head = {
        "414": _ref("responses", "RequestTargetTooLarge"),
        "431": _ref("responses", "RequestHeadTooLarge"),
    }
    return {
        "/healthz": {
            "get": {
                "operationId": "FetchHealth",
                "tags": ["Operations"],
                "summary": "Whether this process can reach Redis",
                "security": [],
                "responses": {
                    "200": _json(
                        "Redis answers.",
                        {"allOf": [_schema("health")], "properties": {"status": {"const": "ok"}}},
                    ),
                    **head,
                    "503": _json(
                        "Redis is unreachable.",
                        {"allOf": [_schema("health")], "properties": {"status": {"const": "unavailable"}}},
                    ),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "FetchOpenApi",
                "tags": ["Operations"],
                "summary": "This description",
                "security": [],
                "responses": {
                    "200": _json(
                        "The OpenAPI 3.1 description of this server.",
                        {"type": "object", "required": ["openapi", "paths"]},
                    ),
                    **head,
                },
            },
        },
    }


_DESCRIPTION = f"""\
A self-hostable server compatible with Twilio Sync's REST API v1 for Services, Documents and Document \
Permissions: Twilio's paths, PascalCase form fields, snake_case JSON fields, dates, paging and error codes.

- Authenticate with HTTP Basic: `AccountSid:AuthToken`, or `ApiKeySid:ApiKeySecret`. Every `/v1` request \
is authenticated before its path is looked at (401 / 20003). `/healthz` and `/openapi.json` are public; \
`/metrics` is when `SYNC_METRICS_AUTH` allows.
- Request bodies are `{FORM}` only; a non-empty body of another type is 415 / 20001.
- Errors are `{{code, message, more_info, status}}`. A missing document is 20404 on REST. Decisions where \
Twilio's behaviour could not be verified: data over {MAX_DATA_BYTES} bytes is 413 / 54006; a malformed \
`If-Match` is 400 / 54003; an update with neither `Data` nor `Ttl` is 400 / 20001.
- A path not described here is 404 / 20404; a described path with a method not described is 405 / 20004 \
with an `Allow` header (see `components.responses`).
- REST callers act for the account: access control (`acl_enabled`) never restricts them, so no REST \
answer is 403. Rate limits apply to websocket clients only: no REST answer is 429.
- `url` fields and `links` are absolute URLs of this server (`SYNC_PUBLIC_URL`, else the request's scheme \
and Host).
"""


def _package_version() -> str:
    try:
        return metadata.version("sync-server")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def build(max_body_bytes: int, *, metrics: bool = True) -> dict[str, Any]:
    """The OpenAPI document, for a server whose REST bodies are limited to ``max_body_bytes`` (and
    that serves ``/metrics`` unless ``metrics`` is false)."""
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "sync-server: Twilio Sync v1 REST API",
            "version": _package_version(),
            "description": _DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "This server."}],
        "security": [{BASIC: []}],
        "tags": [
            {"name": "SyncV1Service"},
            {"name": "SyncV1Document"},
            {"name": "SyncV1DocumentPermission"},
            {"name": "Operations", "description": "Unauthenticated endpoints for operators."},
        ],
        "paths": {
            **_services_paths(),
            **_documents_paths(),
            **_permissions_paths(),
            **_public_paths(),
            **(_metrics_path() if metrics else {}),
        },
        "components": {
            "securitySchemes": {
                BASIC: {
                    "type": "http",
                    "scheme": "basic",
                    "description": "`AccountSid:AuthToken` or `ApiKeySid:ApiKeySecret`.",
                }
            },
            "parameters": _parameters(),
            "schemas": {
                SERVICE: _service_schema(),
                DOCUMENT: _document_schema(),
                PERMISSION: _permission_schema(),
                "meta": _meta_schema(),
                "ListServiceResponse": _list_schema("services", SERVICE, "ListServiceResponse"),
                "ListDocumentResponse": _list_schema("documents", DOCUMENT, "ListDocumentResponse"),
                "ListDocumentPermissionResponse": _list_schema(
                    "permissions", PERMISSION, "ListDocumentPermissionResponse"
                ),
                "error": _error_schema(),
                "health": _health_schema(),
            },
            "responses": _shared_responses(max_body_bytes),
            "headers": {
                _REQUEST_ID: _header(
                    "Twilio's request id, new for every answer of this server, as in its access and "
                    "error logs.",
                    "^RQ[0-9a-f]{32}$",
                )
            },
        },
    }
    return _with_request_ids(document)


def endpoint(max_body_bytes: int, *, metrics: bool = True) -> Callable[[Request], Awaitable[Response]]:
    """The ``GET /openapi.json`` endpoint: the document serialized once, served without credentials
    (it holds no data)."""
    body = orjson.dumps(build(max_body_bytes, metrics=metrics))

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type=JSON)

    return openapi_json
