"""Helpers shared by the REST test modules."""

from __future__ import annotations

from typing import Any

import httpx


def expect_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """Asserts a Twilio error body with exactly these keys, ``code`` and ``status``; returns it."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body == {
        "code": code,
        "message": body["message"],
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    assert isinstance(body["message"], str) and body["message"]
    return body


def documents(service: str) -> str:
    """The Documents list URL of a service, relative to the in-process client's base."""
    return f"/v1/Services/{service}/Documents"
