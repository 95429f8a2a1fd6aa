"""Helpers shared by the test modules: real Redis and server processes (see processes.py)."""
