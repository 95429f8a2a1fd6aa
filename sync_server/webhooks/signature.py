"""``X-Twilio-Signature``, computed as Twilio computes it, so that a receiver checks it with the
official helper libraries' ``RequestValidator`` unchanged: base64 of the HMAC-SHA1, keyed with the
account's auth token, of the URL followed by every parameter's name and value, sorted by name, with
nothing between them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping


def signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
