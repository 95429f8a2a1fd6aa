"""Reading a request: the bounded body, the form, the query string and this server's base URL."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from sync_server import errors
from sync_server.rest.forms import decode_form

FORM = "application/x-www-form-urlencoded"


async def read_form(request: Request, limit: int) -> dict[str, str]:
    """The ``application/x-www-form-urlencoded`` body as a dict (last value wins).

    A body over ``limit`` bytes is refused with 413 before it is read whole: at once when it
    declares its length, after ``limit`` bytes when it is chunked. A non-empty body of another
    type (JSON, multipart, none declared) is refused with 415, unread when it declares its length.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _too_large(limit)
    # Twilio takes forms only; a JSON or multipart body read as a form would be an empty one, and the
    # request would "succeed" without what was sent. An empty body needs no type (curl -X POST).
    is_form = request.headers.get("content-type", "").partition(";")[0].strip().lower() == FORM
    if not is_form and declared not in (None, "0"):
        raise _not_a_form()
    body = await _read_body(request, limit)
    if not body:
        return {}
    if not is_form:
        raise _not_a_form()
    try:
        # Strict twice over: the raw body, and every %XX escape in it (a lenient decoder would turn
        # "%FF" into U+FFFD and store a name or data the client never sent).
        return decode_form(body)
    except UnicodeDecodeError:
        raise errors.ValidationError("The request body is not valid UTF-8") from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 once over ``limit`` bytes; ``ClientDisconnect`` when the
    client goes away first. Read from ASGI ``receive`` directly rather than ``request.stream()``: an
    async generator costs a registration with the event loop per request (2 % of a REST write). The
    form is read once per request, so nothing needs Starlette's cached ``request.body()``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _not_a_form() -> errors.UnsupportedMediaType:
    return errors.UnsupportedMediaType(f"The request body must be {FORM}")


def _too_large(limit: int) -> errors.DataTooLarge:
    return errors.DataTooLarge(f"The request body is over the limit of {limit} bytes")


def base_url(request: Request, public_url: str | None) -> str:
    """The base of ``url`` fields: the configured public URL, else scheme and Host of the request.

    The Host can be trusted here: the app answers only Hosts of the allowed list (``hosts.py``),
    and ``*`` is accepted only with a public URL, so a link never names a host a client made up.
    """
    if public_url:
        return public_url
    scope = request.scope
    host = request.headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"
