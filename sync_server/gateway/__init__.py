"""Websocket gateways: the native protocol (``/ws``) and, later, Twilsock for the official JS SDK."""
