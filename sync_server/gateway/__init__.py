"""Websocket gateways: the native protocol (``/ws``) and Twilsock (``/v3/wsconnect``) for the official
Twilio Sync JS SDK, both on the session core of ``session.py``."""
