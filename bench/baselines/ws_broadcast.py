"""Fan-out baseline: the least a Python server can do per delivery.

A ``websockets`` server that speaks just enough of the native protocol for the fleet (``connected``,
``open``, ``subscribe``, ``set``) and keeps documents in memory. Each ``set`` builds one ``updated``
frame of the same shape (and so about the same size) as the sync server's, encodes it once and hands
it to :func:`websockets.asyncio.server.broadcast`, which writes it to every subscriber's transport
without a task per connection and skips connections whose buffer is full. No Redis, no auth checks.

    python -m bench.baselines.ws_broadcast --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

SERVICE_SID = "IS" + "0" * 32


@dataclass
class Document:
    sid: str
    name: str
    data: bytes
    revision: int = 0
    created: str = field(default_factory=lambda: _now())
    subscribers: set[ServerConnection] = field(default_factory=set)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Server:
    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}

    def document_wire(self, doc: Document, *, previous: bool = False) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "sid": doc.sid,
            "unique_name": doc.name,
            "revision": format(doc.revision, "x"),
        }
        if previous:
            wire["previous_revision"] = format(doc.revision - 1, "x")
        wire.update(
            data=orjson.Fragment(doc.data),
            date_created=doc.created,
            date_updated=_now(),
            date_expires=None,
            created_by="system",
        )
        return wire

    async def handle(self, connection: ServerConnection) -> None:
        event = {
            "event": "connected",
            "identity": "system",
            "service_sid": SERVICE_SID,
            "connection_id": "CN0",
        }
        await connection.send(orjson.dumps(event).decode())
        subscribed: list[Document] = []
        try:
            async for message in connection:
                command = orjson.loads(message)
                reply = self.dispatch(connection, command, subscribed)
                await connection.send(orjson.dumps({"id": command.get("id"), "ok": True, **reply}).decode())
        finally:
            for doc in subscribed:
                doc.subscribers.discard(connection)

    def dispatch(
        self, connection: ServerConnection, command: dict[str, Any], subscribed: list[Document]
    ) -> dict[str, Any]:
        op = command.get("op")
        if op == "open":
            name = command["name"]
            doc = self.documents.get(name)
            if doc is None:
                doc = self.documents[name] = Document(
                    f"ET{len(self.documents):032x}", name, orjson.dumps(command.get("data") or {})
                )
            return {"document": self.document_wire(doc), "created": doc.revision == 0}
        doc = self.documents[command["doc"]]
        if op == "subscribe":
            doc.subscribers.add(connection)
            subscribed.append(doc)
            return {"document": self.document_wire(doc)}
        if op == "set":
            doc.data = orjson.dumps(command["data"])
            doc.revision += 1
            frame = orjson.dumps({"event": "updated", "document": self.document_wire(doc, previous=True)})
            broadcast(doc.subscribers, frame.decode())
            return {"document": self.document_wire(doc)}
        raise ValueError(f"unsupported op {op!r}")


async def main(port: int) -> None:
    server = Server()
    async with serve(server.handle, "127.0.0.1", port, compression=None, max_size=65536, server_header=None):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(main(parser.parse_args().port))
