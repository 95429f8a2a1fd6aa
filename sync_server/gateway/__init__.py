"""Websocket gateways: the native protocol (``/ws``) and Twilsock (``/v3/wsconnect``) for the official
Twilio Sync JS SDK, both on the session core of ``session.py``, served by the connections of
``uvicorn_ws.py``."""

WEBSOCKET_PROTOCOL = "sync_server.gateway.uvicorn_ws:WebSocketConnection"
"""uvicorn's ``ws`` setting for the gateway's websocket protocol (cli.py passes it)."""
