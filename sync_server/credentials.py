"""The account and API key the server accepts, from the environment or ``<data_dir>/credentials.json``.

``SYNC_ACCOUNT_SID`` + ``SYNC_AUTH_TOKEN`` and ``SYNC_API_KEY_SID`` + ``SYNC_API_KEY_SECRET`` each come as
a pair; a pair set in the environment wins. Whatever the environment leaves out is read from the file,
which is generated once (random values, mode 0600) so that a fresh install works without configuration
and keeps its credentials across restarts. An existing file that other users may read or write (say, one
copied or unpacked with a loose umask) is still used, with a warning on stderr that says how to fix it:
refusing it would take the server down over a mode, and its secrets are already exposed either way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CREDENTIALS_FILE", "Credentials", "CredentialsError", "resolve_credentials"]

CREDENTIALS_FILE = "credentials.json"

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_API_KEY_SID = re.compile(r"SK[0-9a-fA-F]{32}")


class CredentialsError(ValueError):
    """Credentials are missing half of a pair, malformed, or the file cannot be read."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Twilio-style credentials. Secrets are left out of ``repr`` so that logging one leaks nothing."""

    account_sid: str
    auth_token: str = field(repr=False)
    api_key_sid: str
    api_key_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        _check(_ACCOUNT_SID, self.account_sid, "account SID", "'AC' followed by 32 hex digits")
        _check(_API_KEY_SID, self.api_key_sid, "API key SID", "'SK' followed by 32 hex digits")
        for name, secret in (("auth token", self.auth_token), ("API key secret", self.api_key_secret)):
            if not secret or secret != secret.strip():
                raise CredentialsError(f"the {name} must be non-empty, without surrounding whitespace")

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            account_sid="AC" + secrets.token_hex(16),
            auth_token=secrets.token_hex(16),
            api_key_sid="SK" + secrets.token_hex(16),
            api_key_secret=secrets.token_hex(16),
        )


def _check(pattern: re.Pattern[str], value: str, name: str, expected: str) -> None:
    if not pattern.fullmatch(value):
        # The value of a SID is not secret, and showing it makes a swapped SID/token obvious.
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise CredentialsError(f"invalid {name} {shown!r}: expected {expected}")


def resolve_credentials(data_dir: Path, env: Mapping[str, str]) -> tuple[Credentials, bool]:
    """Return the credentials and whether any part came from ``<data_dir>/credentials.json``.

    The file is only read (or created) when the environment does not supply both pairs. Raises
    :class:`CredentialsError` on half a pair, a malformed value, or an unreadable file.
    """
    account = _env_pair(env, "SYNC_ACCOUNT_SID", "SYNC_AUTH_TOKEN")
    api_key = _env_pair(env, "SYNC_API_KEY_SID", "SYNC_API_KEY_SECRET")
    if account is not None and api_key is not None:
        return Credentials(*account, *api_key), False
    stored = _load_or_create(data_dir / CREDENTIALS_FILE)
    account = account or (stored.account_sid, stored.auth_token)
    api_key = api_key or (stored.api_key_sid, stored.api_key_secret)
    return Credentials(*account, *api_key), True


def _warn(message: str) -> None:
    # stderr, not logging: this runs in the CLI before any logging is configured.
    print(f"sync-server: warning: {message}", file=sys.stderr, flush=True)


def _env_pair(env: Mapping[str, str], sid_name: str, secret_name: str) -> tuple[str, str] | None:
    sid, secret = env.get(sid_name, ""), env.get(secret_name, "")
    if bool(sid) != bool(secret):
        missing = secret_name if sid else sid_name
        raise CredentialsError(f"{sid_name} and {secret_name} must be set together ({missing} is missing)")
    return (sid, secret) if sid else None


def _load_or_create(path: Path) -> Credentials:
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = Credentials.generate()
    fd, temp_name = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(asdict(created), file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        # link() fails if the file exists, so two servers started at once on one data dir agree on one set;
        # rename() would let the second silently replace credentials the first has already printed.
        try:
            os.link(temp_name, path)
        except FileExistsError:
            return _load(path)
        except OSError:  # a filesystem without hard links
            os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return created


def _load(path: Path) -> Credentials:
    try:
        with path.open("rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)  # of the file read, even if path is swapped
            data = json.loads(file.read())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from exc
    if mode & 0o077:
        _warn(
            f"{path} holds secrets but other users may access it (mode {mode:04o}); "
            f"run: chmod 600 {shlex.quote(str(path))}"
        )
    fields = ("account_sid", "auth_token", "api_key_sid", "api_key_secret")
    if not isinstance(data, dict) or not all(isinstance(data.get(name), str) for name in fields):
        raise CredentialsError(f"{path} must be a JSON object with the string fields {', '.join(fields)}")
    try:
        return Credentials(**{name: data[name] for name in fields})
    except CredentialsError as exc:
        raise CredentialsError(f"{path}: {exc}") from exc
