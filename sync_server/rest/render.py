"""The JSON shapes of Twilio's resources. Document data is embedded as the stored JSON text."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from sync_server.dates import format_optional, format_timestamp
from sync_server.documents import Document, Permission, Service


def service_url(base: str, service_sid: str) -> str:
    return f"{base}/v1/Services/{service_sid}"


def document_url(base: str, service_sid: str, document_sid: str) -> str:
    return f"{base}/v1/Services/{service_sid}/Documents/{document_sid}"


def document_json(doc: Document, base: str, account_sid: str) -> dict[str, Any]:
    url = document_url(base, doc.service_sid, doc.sid)
    return {
        "sid": doc.sid,
        "unique_name": doc.unique_name,
        "account_sid": account_sid,
        "service_sid": doc.service_sid,
        "url": url,
        "links": {"permissions": url + "/Permissions"},
        "revision": doc.revision_text,
        "data": orjson.Fragment(doc.data),
        "date_expires": format_optional(doc.date_expires),
        "date_created": format_timestamp(doc.date_created),
        "date_updated": format_timestamp(doc.date_updated),
        "created_by": doc.created_by,
    }


def service_json(service: Service, base: str, account_sid: str) -> dict[str, Any]:
    url = service_url(base, service.sid)
    return {
        "sid": service.sid,
        "unique_name": service.unique_name,
        "account_sid": account_sid,
        "friendly_name": service.friendly_name,
        "date_created": format_timestamp(service.date_created),
        "date_updated": format_timestamp(service.date_updated),
        "url": url,
        "webhook_url": service.webhook_url,
        "webhooks_from_rest_enabled": service.webhooks_from_rest_enabled,
        "reachability_webhooks_enabled": service.reachability_webhooks_enabled,
        "acl_enabled": service.acl_enabled,
        "reachability_debouncing_enabled": service.reachability_debouncing_enabled,
        "reachability_debouncing_window": service.reachability_debouncing_window,
        "links": {
            "documents": url + "/Documents",
            "lists": url + "/Lists",
            "maps": url + "/Maps",
            "streams": url + "/Streams",
        },
    }


def permission_json(permission: Permission, base: str, account_sid: str) -> dict[str, Any]:
    doc_url = document_url(base, permission.service_sid, permission.document_sid)
    return {
        "account_sid": account_sid,
        "service_sid": permission.service_sid,
        "document_sid": permission.document_sid,
        "identity": permission.identity,
        "read": permission.read,
        "write": permission.write,
        "manage": permission.manage,
        "url": f"{doc_url}/Permissions/{quote(permission.identity, safe='')}",
    }
