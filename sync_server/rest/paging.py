"""Twilio's paging: ``PageSize``, ``Page`` and an opaque ``PageToken``, and the ``meta`` envelope.

A page token is ``PT`` followed by ``a`` (the page after) or ``b`` (the page before) and a hex
creation-sequence cursor. Cursors, not offsets, are what keeps a walk exact while documents are
created and deleted during it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sync_server import errors
from sync_server.documents import Page
from sync_server.validation import whole_number

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TOKEN = re.compile(r"PT([ab])([0-9a-f]{1,16})")


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int
    page: int
    after: int | None
    before: int | None
    token: str | None


def parse_page_request(query: dict[str, str]) -> PageRequest:
    size_text = query.get("PageSize")
    size = DEFAULT_PAGE_SIZE
    if size_text is not None:
        parsed = whole_number(size_text)
        if parsed is None or not 1 <= parsed <= MAX_PAGE_SIZE:
            raise errors.InvalidPageSize(
                f"Invalid PageSize: it must be a whole number from 1 to {MAX_PAGE_SIZE}"
            )
        size = parsed
    # Page is the client's own count, echoed in meta; only the PageToken moves the cursor.
    page = whole_number(query.get("Page", "0"))
    if page is None:
        raise errors.ValidationError("Invalid Page: it must be a whole number from 0")
    token = query.get("PageToken") or None
    after = before = None
    if token is not None:
        direction, cursor = _decode_token(token)
        if direction == "a":
            after = cursor
        else:
            before = cursor
    return PageRequest(size=size, page=page, after=after, before=before, token=token)


def _decode_token(token: str) -> tuple[str, int]:
    # Only what page_meta issues: int(x, 16) alone would also take "-5", " 5", "0x5" and "1_0".
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise _bad_token()
    return match[1], int(match[2], 16)


def _bad_token() -> errors.ValidationError:
    return errors.InvalidPageToken("Invalid PageToken")


def page_meta(url: str, key: str, request: PageRequest, page: Page[Any]) -> dict[str, Any]:
    """The ``meta`` object. ``url`` is the list's absolute URL without a query string."""

    def link(page_number: int, token: str | None) -> str:
        params: dict[str, str | int] = {"PageSize": request.size, "Page": page_number}
        if token:
            params["PageToken"] = token
        return f"{url}?{urlencode(params)}"

    backwards = request.before is not None
    has_next = (page.more and not backwards) or (backwards and page.last_cursor is not None)
    has_previous = (page.more and backwards) or (
        not backwards and request.after is not None and page.first_cursor is not None
    )
    return {
        "first_page_url": link(0, None),
        "key": key,
        "next_page_url": link(request.page + 1, f"PTa{page.last_cursor:x}") if has_next else None,
        "page": request.page,
        "page_size": request.size,
        "previous_page_url": (
            link(max(request.page - 1, 0), f"PTb{page.first_cursor:x}") if has_previous else None
        ),
        "url": link(request.page, request.token),
    }
