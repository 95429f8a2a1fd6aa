"""The REST endpoints: decode the form, call the document service once, render Twilio's JSON.

REST callers authenticate with the account's credentials: they act as a system principal, which
access control never restricts.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from sync_server import errors
from sync_server.documents import DocumentService, JsonText
from sync_server.principal import Principal
from sync_server.rest.paging import page_meta, parse_page_request
from sync_server.rest.render import (
    document_json,
    document_url,
    permission_json,
    service_json,
    service_url,
)
from sync_server.rest.requests import read_form
from sync_server.rest.responses import json_response
from sync_server.validation import parse_ttl, whole_number


@dataclass(slots=True)  # not frozen: a frozen init sets each field through object.__setattr__
class Context:
    """One request's inputs for a handler (built once per request, never changed)."""

    request: Request
    documents: DocumentService
    params: list[str]
    """The path parameters in order: service, document, identity (as far as the route has them)."""
    query: dict[str, str]
    base: str
    account_sid: str
    max_body_bytes: int

    @property
    def who(self) -> Principal:
        """The system principal, on the service of the path (``default`` resolved)."""
        return Principal.system(self.documents.service_sid(self.params[0]))

    @property
    def account(self) -> Principal:
        """The system principal for account-wide routes (``/v1/Services``), outside any service."""
        return Principal.system("")

    async def form(self) -> dict[str, str]:
        return await read_form(self.request, self.max_body_bytes)


# -- services -------------------------------------------------------------------------------------

_BOOLEAN_FIELDS = {
    "AclEnabled": "acl_enabled",
    "ReachabilityWebhooksEnabled": "reachability_webhooks_enabled",
    "ReachabilityDebouncingEnabled": "reachability_debouncing_enabled",
    "WebhooksFromRestEnabled": "webhooks_from_rest_enabled",
}


def _service_settings(form: dict[str, str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    if "FriendlyName" in form:
        name = form["FriendlyName"]
        if len(name) > 256:
            raise errors.ValidationError("Invalid FriendlyName: at most 256 characters")
        settings["friendly_name"] = name
    if "WebhookUrl" in form:
        url = form["WebhookUrl"]
        if url and not _is_http_url(url):
            raise errors.ValidationError("Invalid WebhookUrl: it must be an absolute http or https URL")
        settings["webhook_url"] = url
    for field, stored in _BOOLEAN_FIELDS.items():
        if field in form:
            settings[stored] = "1" if _boolean(field, form[field]) else "0"
    if "ReachabilityDebouncingWindow" in form:
        window = whole_number(form["ReachabilityDebouncingWindow"])
        if window is None or not 1000 <= window <= 30000:
            raise errors.ValidationError(
                "Invalid ReachabilityDebouncingWindow: it must be 1000 to 30000 milliseconds"
            )
        settings["reachability_debouncing_window"] = str(window)
    return settings


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1": urlsplit raises on a broken IPv6 host
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _boolean(field: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise errors.ValidationError(f"Invalid {field}: it must be true or false")
    return lowered == "true"


async def create_service(ctx: Context) -> Response:
    service = await ctx.documents.create_service(ctx.account, _service_settings(await ctx.form()))
    return json_response(service_json(service, ctx.base, ctx.account_sid), 201)


async def fetch_service(ctx: Context) -> Response:
    service = await ctx.documents.fetch_service(ctx.who)
    return json_response(service_json(service, ctx.base, ctx.account_sid))


async def update_service(ctx: Context) -> Response:
    service = await ctx.documents.update_service(ctx.who, _service_settings(await ctx.form()))
    return json_response(service_json(service, ctx.base, ctx.account_sid))


async def delete_service(ctx: Context) -> Response:
    await ctx.documents.delete_service(ctx.who)
    return Response(status_code=204)


async def list_services(ctx: Context) -> Response:
    page_request = parse_page_request(ctx.query)
    page = await ctx.documents.list_services(
        ctx.account, after=page_request.after, before=page_request.before, size=page_request.size
    )
    return json_response(
        {
            "services": [service_json(s, ctx.base, ctx.account_sid) for s in page.items],
            "meta": page_meta(f"{ctx.base}/v1/Services", "services", page_request, page),
        }
    )


# -- documents ------------------------------------------------------------------------------------


async def create_document(ctx: Context) -> Response:
    form = await ctx.form()
    doc = await ctx.documents.create(
        ctx.who,
        unique_name=form.get("UniqueName"),
        data=JsonText(form["Data"]) if "Data" in form else None,
        ttl=parse_ttl(form["Ttl"]) if "Ttl" in form else None,
    )
    return json_response(document_json(doc, ctx.base, ctx.account_sid), 201, {"ETag": doc.revision_text})


async def fetch_document(ctx: Context) -> Response:
    doc = await ctx.documents.fetch(ctx.who, ctx.params[1])
    return json_response(document_json(doc, ctx.base, ctx.account_sid), 200, {"ETag": doc.revision_text})


async def update_document(ctx: Context) -> Response:
    form = await ctx.form()
    doc = await ctx.documents.write(
        ctx.who,
        ctx.params[1],
        data=JsonText(form["Data"]) if "Data" in form else None,
        ttl=parse_ttl(form["Ttl"]) if "Ttl" in form else None,
        if_match=ctx.request.headers.get("if-match"),
    )
    return json_response(document_json(doc, ctx.base, ctx.account_sid), 200, {"ETag": doc.revision_text})


async def delete_document(ctx: Context) -> Response:
    await ctx.documents.remove(ctx.who, ctx.params[1])
    return Response(status_code=204)


async def list_documents(ctx: Context) -> Response:
    page_request = parse_page_request(ctx.query)
    who = ctx.who
    page = await ctx.documents.list_documents(
        who, after=page_request.after, before=page_request.before, size=page_request.size
    )
    url = f"{service_url(ctx.base, who.service_sid)}/Documents"
    return json_response(
        {
            "documents": [document_json(d, ctx.base, ctx.account_sid) for d in page.items],
            "meta": page_meta(url, "documents", page_request, page),
        }
    )


# -- permissions ----------------------------------------------------------------------------------


async def fetch_permission(ctx: Context) -> Response:
    permission = await ctx.documents.fetch_permission(ctx.who, ctx.params[1], ctx.params[2])
    return json_response(permission_json(permission, ctx.base, ctx.account_sid))


async def update_permission(ctx: Context) -> Response:
    form = await ctx.form()
    missing = [name for name in ("Read", "Write", "Manage") if name not in form]
    if missing:
        raise errors.ValidationError(f"Missing required parameter {missing[0]} in the post body")
    read, write, manage = (_boolean(name, form[name]) for name in ("Read", "Write", "Manage"))
    permission = await ctx.documents.set_permission(
        ctx.who, ctx.params[1], ctx.params[2], read=read, write=write, manage=manage
    )
    return json_response(permission_json(permission, ctx.base, ctx.account_sid))


async def delete_permission(ctx: Context) -> Response:
    await ctx.documents.delete_permission(ctx.who, ctx.params[1], ctx.params[2])
    return Response(status_code=204)


async def list_permissions(ctx: Context) -> Response:
    """Permissions are few per document: the page is cut from the sorted whole by identity."""
    page_request = parse_page_request(ctx.query)
    who = ctx.who
    document_sid, found = await ctx.documents.list_permissions(who, ctx.params[1])
    start = page_request.page * page_request.size
    items = found[start : start + page_request.size]
    more = len(found) > start + page_request.size
    doc_url = document_url(ctx.base, who.service_sid, document_sid)
    meta = {
        "first_page_url": f"{doc_url}/Permissions?PageSize={page_request.size}&Page=0",
        "key": "permissions",
        "next_page_url": (
            f"{doc_url}/Permissions?PageSize={page_request.size}&Page={page_request.page + 1}"
            if more
            else None
        ),
        "page": page_request.page,
        "page_size": page_request.size,
        "previous_page_url": (
            f"{doc_url}/Permissions?PageSize={page_request.size}&Page={page_request.page - 1}"
            if page_request.page > 0
            else None
        ),
        "url": f"{doc_url}/Permissions?PageSize={page_request.size}&Page={page_request.page}",
    }
    return json_response(
        {"permissions": [permission_json(p, ctx.base, ctx.account_sid) for p in items], "meta": meta}
    )
