"""Server-to-client websocket frames, built once and written as they are to every connection.

Server frames are never masked (RFC 6455 §5.1) and this server sends no compressed or fragmented
messages, so the complete frame depends only on the payload: it can be encoded once per event and
the same bytes written to each subscriber's transport.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_TEXT = 0x81  # FIN + text opcode
_BINARY = 0x82  # FIN + binary opcode


@dataclass(frozen=True, slots=True)
class OutFrame:
    payload: bytes
    binary: bool
    wire: bytes
    """The whole websocket frame: header and payload."""


def out_frame(payload: bytes, *, binary: bool = False) -> OutFrame:
    first = _BINARY if binary else _TEXT
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return OutFrame(payload, binary, header + payload)
