"""Debian's Chromium, driven by the ``playwright`` package (never a browser Playwright downloads)."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "missing_chromium"]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: the setuid sandbox is unavailable
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def missing_chromium() -> list[str]:
    """What a browser test lacks: the playwright package and/or the Chromium executable."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    return missing
