"""The official Twilio Sync JS SDK pinned in ``tests/js``, and access tokens for it.

The SDK is installed with ``npm ci --prefix tests/js`` and never copied into the repository: Node
loads it from ``node_modules``, and the browser test serves its UMD bundle from there. Tokens are
minted by the official ``twilio`` library, as a Twilio customer's backend would mint them.
"""

from __future__ import annotations

import os
import shutil

import pytest
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import SyncGrant

from tests.support.processes import REPO_ROOT, TEST_ACCOUNT_SID, TEST_API_KEY_SECRET, TEST_API_KEY_SID

__all__ = ["BROWSER_BUNDLE", "JS_DIR", "access_token", "missing_node_sdk", "require"]

JS_DIR = REPO_ROOT / "tests" / "js"
SDK_DIR = JS_DIR / "node_modules" / "twilio-sync"
BROWSER_BUNDLE = SDK_DIR / "builds" / "twilio-sync.min.js"
"""The SDK's browser build: a classic script that defines the global ``Twilio.Sync``."""


def missing_node_sdk(*, node: bool = True) -> list[str]:
    """What the SDK tests lack: ``node`` (unless ``node`` is false) and ``tests/js/node_modules``."""
    missing = []
    if node and shutil.which("node") is None:
        missing.append("node")
    if not SDK_DIR.is_dir():
        missing.append("tests/js/node_modules (run: npm ci --prefix tests/js)")
    return missing


def require(missing: list[str], what: str) -> None:
    """Skips when something is missing on a developer machine; fails when ``CI`` is set, so that CI
    never silently loses the test."""
    if not missing:
        return
    message = f"{what} needs " + " and ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def access_token(service: str, identity: str, ttl: int = 600, *, expired: bool = False) -> str:
    """A Twilio access token with a Sync grant for ``service``, signed with the test API key."""
    jwt = AccessToken(
        TEST_ACCOUNT_SID,
        TEST_API_KEY_SID,
        TEST_API_KEY_SECRET,
        identity=identity,
        ttl=-600 if expired else ttl,
    )
    jwt.add_grant(SyncGrant(service_sid=service))
    return str(jwt.to_jwt())
