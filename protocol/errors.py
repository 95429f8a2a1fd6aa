"""The one exception the protocol raises: a frame that is not a valid command (or server message)."""

from __future__ import annotations

__all__ = ["INVALID_COMMAND", "INVALID_DATA", "INVALID_JSON", "INVALID_TTL", "ProtocolError"]

# Twilio codes, the same numbers the REST API uses for the same mistakes (see sync_server/errors.py; this
# package may not import it, so the three it needs are repeated here).
INVALID_COMMAND = 20001
"""Not JSON, not an object, bad ``id``, unknown ``op``, a missing or mistyped field."""
INVALID_JSON = 54008
"""A frame nested deeper than the JSON parser reads (1,024 levels); ``data`` over the server's
nesting limit gets the same code from the server."""
INVALID_DATA = 54101
"""``data`` is not a JSON object."""
INVALID_TTL = 54011
"""``ttl`` is not an integer."""


class ProtocolError(Exception):
    """A frame the codec refuses. The server answers it with an error reply and keeps the connection.

    ``command_id`` is the command's ``id`` when it could be read (the error reply echoes it), else ``None``
    (the reply then carries ``"id": null``). ``status`` is the HTTP-like status of the error reply.
    """

    def __init__(
        self, code: int, message: str, *, command_id: int | str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id
        self.status = status

    def __repr__(self) -> str:
        return f"ProtocolError({self.code}, {self.message!r}, command_id={self.command_id!r})"
