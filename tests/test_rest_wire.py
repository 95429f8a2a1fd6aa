"""HTTP details of the REST API, in-process on the real Redis: 405 names the allowed methods in
``Allow`` (REST routes and the app's own routes alike), and a body that is not a form is refused
with 415 instead of being read as an empty form.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.rest import documents, expect_error


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/Services", "GET, POST"),
        ("DELETE", "/v1/Services", "GET, POST"),
        ("PATCH", "/v1/Services/{service}", "GET, POST, DELETE"),
        ("PUT", "/v1/Services/{service}/Documents/x", "GET, POST, DELETE"),
        ("DELETE", "/v1/Services/{service}/Documents", "GET, POST"),
        ("POST", "/v1/Services/{service}/Documents/x/Permissions", "GET"),
        ("PUT", "/v1/Services/{service}/Documents/x/Permissions/alice", "GET, POST, DELETE"),
        ("HEAD", "/v1/Services", "GET, POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/demo", "GET, HEAD"),
        ("POST", "/sdk/sync.js", "GET, HEAD"),
    ],
)
async def test_405_has_an_allow_header(
    client: httpx.AsyncClient, service: str, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path.format(service=service))
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    if method != "HEAD":
        body = expect_error(response, 405, 20004)
        assert body["message"] == f"Method not allowed; allowed: {allowed}"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"UniqueName": "j", "Data": "{}"}'),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="Data"\r\n\r\n{}\r\n--x--\r\n',
        ),
        ("text/plain", b"UniqueName=t"),
        (None, b"UniqueName=untyped"),
    ],
)
async def test_a_body_that_is_not_a_form_is_415(
    client: httpx.AsyncClient, service: str, content_type: str | None, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    request = client.build_request("POST", documents(service), content=body, headers=headers)
    assert request.headers.get("content-type") == content_type
    response = await client.send(request)
    error = expect_error(response, 415, 20001)
    assert error["message"] == "The request body must be application/x-www-form-urlencoded"
    # Nothing was created from it.
    assert (await client.get(documents(service))).json()["documents"] == []


async def test_415_also_when_chunked(client: httpx.AsyncClient, service: str) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"Data": '
        yield b'"{}"}'

    response = await client.post(
        documents(service), content=chunks(), headers={"Content-Type": "application/json"}
    )
    expect_error(response, 415, 20001)


async def test_forms_and_empty_bodies_are_accepted(client: httpx.AsyncClient, service: str) -> None:
    typed = await client.post(
        documents(service),
        content=b"UniqueName=typed",
        headers={"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=utf-8"},
    )
    assert typed.status_code == 201 and typed.json()["unique_name"] == "typed"
    # curl -X POST without data: no body, no type.
    request = client.build_request("POST", documents(service))
    assert "content-type" not in request.headers
    untyped = await client.send(request)
    assert untyped.status_code == 201
    # An empty body with another type carries nothing that could be lost.
    empty_json = await client.post(
        documents(service), content=b"", headers={"Content-Type": "application/json"}
    )
    assert empty_json.status_code == 201
