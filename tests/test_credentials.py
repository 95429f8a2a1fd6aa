"""Credentials: generated once into the data dir, overridden pair by pair by the environment."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from sync_server.credentials import Credentials, CredentialsError, resolve_credentials

HEX32 = re.compile(r"[0-9a-f]{32}")
ACCOUNT_ENV = {"SYNC_ACCOUNT_SID": "AC" + "1" * 32, "SYNC_AUTH_TOKEN": "env-token"}
KEY_ENV = {"SYNC_API_KEY_SID": "SK" + "2" * 32, "SYNC_API_KEY_SECRET": "env-secret"}


def test_generated_once_then_reused(tmp_path: Path) -> None:
    first, from_file = resolve_credentials(tmp_path / "data", {})
    assert from_file
    assert first.account_sid.startswith("AC") and HEX32.fullmatch(first.account_sid[2:])
    assert first.api_key_sid.startswith("SK") and HEX32.fullmatch(first.api_key_sid[2:])
    assert HEX32.fullmatch(first.auth_token) and HEX32.fullmatch(first.api_key_secret)
    assert first.auth_token != first.api_key_secret
    second, from_file = resolve_credentials(tmp_path / "data", {})
    assert (second, from_file) == (first, True)


def test_file_is_private_and_alone(tmp_path: Path) -> None:
    credentials, _ = resolve_credentials(tmp_path, {})
    path = tmp_path / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["auth_token"] == credentials.auth_token
    assert [entry.name for entry in tmp_path.iterdir()] == ["credentials.json"]  # no temp file left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o666])
def test_a_file_others_may_access_is_used_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    created, _ = resolve_credentials(tmp_path, {})
    assert capsys.readouterr().err == ""
    path = tmp_path / "credentials.json"
    path.chmod(mode)
    assert resolve_credentials(tmp_path, {}) == (created, True)
    assert capsys.readouterr().err == (
        f"sync-server: warning: {path} holds secrets but other users may access it (mode {mode:04o}); "
        f"run: chmod 600 {path}\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == mode  # warned about, not changed behind the user's back


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_file_is_used_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    resolve_credentials(tmp_path, {})
    (tmp_path / "credentials.json").chmod(mode)
    resolve_credentials(tmp_path, {})
    assert capsys.readouterr().err == ""


def test_the_warning_quotes_the_path_for_the_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "my data"
    resolve_credentials(data_dir, {})
    (data_dir / "credentials.json").chmod(0o644)
    resolve_credentials(data_dir, {})
    assert capsys.readouterr().err.endswith(f"run: chmod 600 '{data_dir}/credentials.json'\n")


def test_environment_wins_and_touches_no_file(tmp_path: Path) -> None:
    credentials, from_file = resolve_credentials(tmp_path, {**ACCOUNT_ENV, **KEY_ENV})
    assert not from_file
    assert credentials == Credentials("AC" + "1" * 32, "env-token", "SK" + "2" * 32, "env-secret")
    assert not (tmp_path / "credentials.json").exists()


def test_account_from_env_key_from_file(tmp_path: Path) -> None:
    stored, _ = resolve_credentials(tmp_path, {})
    credentials, from_file = resolve_credentials(tmp_path, ACCOUNT_ENV)
    assert from_file
    assert (credentials.account_sid, credentials.auth_token) == ("AC" + "1" * 32, "env-token")
    assert credentials.api_key_sid == stored.api_key_sid
    assert credentials.api_key_secret == stored.api_key_secret


def test_key_generated_when_only_account_is_set(tmp_path: Path) -> None:
    credentials, from_file = resolve_credentials(tmp_path, ACCOUNT_ENV)
    assert from_file and credentials.account_sid == ACCOUNT_ENV["SYNC_ACCOUNT_SID"]
    assert credentials.api_key_sid == json.loads((tmp_path / "credentials.json").read_text())["api_key_sid"]


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    _, from_file = resolve_credentials(tmp_path, {"SYNC_ACCOUNT_SID": "", "SYNC_AUTH_TOKEN": ""})
    assert from_file


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SYNC_ACCOUNT_SID": "AC" + "1" * 32}, "SYNC_AUTH_TOKEN is missing"),
        ({"SYNC_API_KEY_SECRET": "s"}, "SYNC_API_KEY_SID is missing"),
        ({**ACCOUNT_ENV, "SYNC_ACCOUNT_SID": "AC123"}, "invalid account SID 'AC123'"),
        ({**ACCOUNT_ENV, "SYNC_ACCOUNT_SID": "SK" + "1" * 32}, "invalid account SID"),
        ({**ACCOUNT_ENV, "SYNC_ACCOUNT_SID": "AC" + "g" * 32}, "invalid account SID"),
        ({**ACCOUNT_ENV, **KEY_ENV, "SYNC_API_KEY_SID": "AC" + "2" * 32}, "invalid API key SID"),
        ({**ACCOUNT_ENV, "SYNC_AUTH_TOKEN": " padded "}, "auth token must be non-empty"),
    ],
)
def test_bad_environment_rejected(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(CredentialsError, match=re.escape(message)):
        resolve_credentials(tmp_path, env)


def test_bad_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{not json")
    with pytest.raises(CredentialsError, match="cannot read"):
        resolve_credentials(tmp_path, {})
    path.write_text(json.dumps({"account_sid": "AC1", "auth_token": "t", "api_key_sid": "SK1"}))
    with pytest.raises(CredentialsError, match="string fields"):
        resolve_credentials(tmp_path, {})
    fields = {"account_sid": "AC1", "auth_token": "t", "api_key_sid": "SK" + "0" * 32, "api_key_secret": "s"}
    path.write_text(json.dumps(fields))
    with pytest.raises(CredentialsError, match=r"credentials\.json: invalid account SID"):
        resolve_credentials(tmp_path, {})


def test_repr_hides_secrets() -> None:
    credentials = Credentials.generate()
    assert credentials.account_sid in repr(credentials)
    assert credentials.auth_token not in repr(credentials)
    assert credentials.api_key_secret not in repr(credentials)
