"""Access tokens: the official helper's tokens verify, ours look exactly like them, and every bad token
maps to its Twilio code without leaking the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import SyncGrant, VideoGrant

from sync_server.errors import AuthenticationError
from sync_server.tokens import (
    DEFAULT_LEEWAY,
    MAX_TOKEN_LIFETIME,
    AccessGrant,
    AccessTokenExpired,
    AccessTokenLifetimeExceeded,
    AccessTokenNotYetValid,
    InvalidAccessToken,
    InvalidAccessTokenGrants,
    InvalidAccessTokenHeader,
    InvalidAccessTokenIssuer,
    InvalidAccessTokenSignature,
    TokenVerifier,
    mint_access_token,
)

ACCOUNT = "AC" + "a" * 32
KEY = "SK" + "b" * 32
SECRET = "0123456789abcdef0123456789abcdef"  # API key secrets are 32 characters
OTHER_KEY = "SK" + "c" * 32
OTHER_SECRET = "fedcba9876543210fedcba9876543210"
SERVICE = "IS" + "d" * 32
NOW = 1_750_000_000


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(ACCOUNT, {KEY: SECRET, OTHER_KEY: OTHER_SECRET})


def official(identity: str | None = "alice", service: str | None = SERVICE, **kwargs: Any) -> str:
    token = AccessToken(ACCOUNT, KEY, SECRET, identity=identity, **kwargs)
    if service is not None:
        token.add_grant(SyncGrant(service_sid=service))
    return str(token.to_jwt())


def forge(payload: dict[str, Any], header: dict[str, Any] | None = None, secret: str = SECRET) -> str:
    """A token signed with PyJWT from an arbitrary payload (the Node helper's shape, broken claims…)."""
    headers = {"cty": "twilio-fpa;v=1"} if header is None else header
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "jti": f"{KEY}-{NOW}",
        "grants": {"identity": "alice", "data_sync": {"service_sid": SERVICE}},
        "iss": KEY,
        "sub": ACCOUNT,
        "iat": NOW,
        "exp": NOW + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint_signature(signing_input: str) -> str:
    return b64(hmac.digest(SECRET.encode(), signing_input.encode(), hashlib.sha256))


def expect(code: int, verifier: TokenVerifier, token: str, now: float = NOW) -> InvalidAccessToken:
    with pytest.raises(InvalidAccessToken) as info:
        verifier.verify(token, now=now)
    err = info.value
    assert (err.code, err.status) == (code, 401)
    assert isinstance(err, AuthenticationError)
    if token:
        assert token not in err.message and token not in str(err)
    return err


# --- tokens that verify ---------------------------------------------------------------------------------


def test_official_python_token_verifies(verifier: TokenVerifier) -> None:
    grant = verifier.verify(official(ttl=600))
    assert grant.identity == "alice"
    assert grant.service_sid == SERVICE
    assert time.time() + 590 < grant.expires_at <= time.time() + 600


def test_official_token_with_default_service(verifier: TokenVerifier) -> None:
    assert verifier.verify(official(service="default")).service_sid == "default"


def test_official_token_signed_by_second_key() -> None:
    token = AccessToken(ACCOUNT, OTHER_KEY, OTHER_SECRET, identity="bob")
    token.add_grant(SyncGrant(service_sid=SERVICE))
    grant = TokenVerifier(ACCOUNT, {KEY: SECRET, OTHER_KEY: OTHER_SECRET}).verify(token.to_jwt())
    assert grant.identity == "bob"


def test_node_shaped_token_with_iat_and_no_nbf(verifier: TokenVerifier) -> None:
    grant = verifier.verify(forge(claims()), now=NOW + 10)
    assert grant == AccessGrant(identity="alice", service_sid=SERVICE, expires_at=NOW + 3600)


def test_data_sync_grant_without_service_sid_means_the_default_service(verifier: TokenVerifier) -> None:
    # What the official helper mints for SyncGrant() with no service: "data_sync": {}.
    token = AccessToken(ACCOUNT, KEY, SECRET, identity="alice")
    token.add_grant(SyncGrant())
    assert jwt.decode(token.to_jwt(), SECRET, algorithms=["HS256"])["grants"]["data_sync"] == {}
    assert verifier.verify(token.to_jwt()).service_sid == "default"
    for grant in ({}, {"service_sid": None}, {"endpoint_id": "browser-1"}):
        forged = forge(claims(grants={"identity": "alice", "data_sync": grant}))
        assert verifier.verify(forged, now=NOW) == AccessGrant("alice", "default", NOW + 3600)


def test_leeway_tolerates_small_skew(verifier: TokenVerifier) -> None:
    token = forge(claims(nbf=NOW + 3, exp=NOW + 100))
    assert verifier.verify(token, now=NOW).identity == "alice"
    assert verifier.verify(token, now=NOW + 103).identity == "alice"


# --- minting --------------------------------------------------------------------------------------------


def test_minted_token_verifies(verifier: TokenVerifier) -> None:
    token = mint_access_token(ACCOUNT, KEY, SECRET, "alice", SERVICE, ttl=60, now=NOW)
    assert verifier.verify(token, now=NOW + 1) == AccessGrant("alice", SERVICE, NOW + 60)


def test_minted_token_decodes_with_pyjwt() -> None:
    token = mint_access_token(ACCOUNT, KEY, SECRET, "alice", now=time.time())
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "nbf"]})
    assert payload["iss"] == KEY and payload["sub"] == ACCOUNT
    assert payload["jti"] == f"{KEY}-{payload['nbf']}"
    assert payload["grants"] == {"identity": "alice", "data_sync": {"service_sid": "default"}}
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "cty": "twilio-fpa;v=1", "typ": "JWT"}


def test_minted_token_is_byte_identical_to_official(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW + 0.25)
    assert mint_access_token(ACCOUNT, KEY, SECRET, "alice", SERVICE, ttl=900) == official(ttl=900)


@pytest.mark.parametrize(
    ("identity", "ttl"), [("", 3600), ("x" * 257, 3600), ("alice", 0), ("alice", -5), ("alice", 86_401)]
)
def test_mint_rejects_bad_arguments(identity: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        mint_access_token(ACCOUNT, KEY, SECRET, identity, ttl=ttl)


def test_mint_accepts_the_maximum_lifetime(verifier: TokenVerifier) -> None:
    token = mint_access_token(ACCOUNT, KEY, SECRET, "alice", ttl=MAX_TOKEN_LIFETIME, now=NOW)
    assert verifier.verify(token, now=NOW).expires_at == NOW + 86_400


def test_verifier_rejects_empty_secret() -> None:
    with pytest.raises(ValueError):
        TokenVerifier(ACCOUNT, {KEY: ""})


# --- time -----------------------------------------------------------------------------------------------


def test_expired(verifier: TokenVerifier) -> None:
    expect(20104, verifier, forge(claims(exp=NOW - 6)))
    expect(20104, verifier, official(ttl=60), now=time.time() + 120)


@pytest.mark.parametrize("exp", [None, "tomorrow", True, [1]])
def test_missing_or_invalid_exp(verifier: TokenVerifier, exp: object) -> None:
    expect(20104, verifier, forge(claims(exp=exp)))


def test_lifetime_of_24_hours_is_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify(official(ttl=MAX_TOKEN_LIFETIME)).identity == "alice"
    edge = NOW + MAX_TOKEN_LIFETIME + int(DEFAULT_LEEWAY)
    assert verifier.verify(forge(claims(iat=NOW, exp=edge)), now=NOW).expires_at == edge
    # A minting clock a few seconds ahead: nbf slightly in the future, exp 24 h after it.
    ahead = forge(claims(iat=None, nbf=NOW + 3, exp=NOW + 3 + MAX_TOKEN_LIFETIME))
    assert verifier.verify(ahead, now=NOW).identity == "alice"


@pytest.mark.parametrize(
    "times",
    [
        {"iat": NOW, "exp": NOW + MAX_TOKEN_LIFETIME + int(DEFAULT_LEEWAY) + 1},  # Node shape
        {"iat": None, "nbf": NOW, "exp": NOW + 2 * MAX_TOKEN_LIFETIME},  # Python shape
        {"iat": None, "exp": 32_503_680_000},  # the year 3000, no nbf/iat: measured from now
        {"iat": None, "exp": 1e300},
        {"iat": NOW, "nbf": NOW + 3600, "exp": NOW + 3600 + MAX_TOKEN_LIFETIME},  # from the earliest
        {"iat": NOW - MAX_TOKEN_LIFETIME, "exp": NOW + 3600},  # issued long ago, still far from exp
        {"iat": NOW + 10 * MAX_TOKEN_LIFETIME, "exp": NOW + 10 * MAX_TOKEN_LIFETIME + 60},  # iat ahead
    ],
)
def test_lifetime_over_24_hours_is_refused(verifier: TokenVerifier, times: dict[str, Any]) -> None:
    now = max(NOW, times.get("nbf") or NOW)  # verified once valid, so that only the lifetime is wrong
    err = expect(20157, verifier, forge(claims(**times)), now=now)
    assert isinstance(err, AccessTokenLifetimeExceeded)
    assert not isinstance(err, AccessTokenExpired)  # a client must not just fetch another such token


def test_official_token_over_24_hours_is_refused(verifier: TokenVerifier) -> None:
    expect(20157, verifier, official(ttl=MAX_TOKEN_LIFETIME + 60), now=time.time())
    long_lived = AccessToken(
        ACCOUNT, KEY, SECRET, identity="alice", valid_until=int(time.time()) + 7 * 86_400
    )
    long_lived.add_grant(SyncGrant(service_sid=SERVICE))
    expect(20157, verifier, str(long_lived.to_jwt()), now=time.time())


@pytest.mark.parametrize("iat", ["yesterday", True, [NOW]])
def test_invalid_iat(verifier: TokenVerifier, iat: object) -> None:
    header, payload = b64(b'{"alg":"HS256"}'), b64(orjson.dumps(claims(iat=iat)))
    expect(20101, verifier, f"{header}.{payload}.{mint_signature(f'{header}.{payload}')}")


def test_not_yet_valid(verifier: TokenVerifier) -> None:
    expect(20105, verifier, forge(claims(nbf=NOW + 60)))
    expect(20105, verifier, official(), now=time.time() - 60)
    expect(20105, verifier, forge(claims(nbf="now")))


# --- issuer, subject, signature -------------------------------------------------------------------------


def test_wrong_secret(verifier: TokenVerifier) -> None:
    expect(20107, verifier, forge(claims(), secret="not-the-secret-not-the-secret-00"))


def test_signature_from_other_known_key(verifier: TokenVerifier) -> None:
    # Signed by OTHER_KEY's secret but claiming KEY as issuer.
    expect(20107, verifier, forge(claims(), secret=OTHER_SECRET))


def test_unknown_issuer(verifier: TokenVerifier) -> None:
    expect(20103, verifier, forge(claims(iss="SK" + "f" * 32)))
    expect(20103, verifier, forge(claims(iss=None)))
    h, p = b64(b'{"alg":"HS256"}'), b64(orjson.dumps(claims(iss=["SK"])))  # PyJWT refuses to encode it
    expect(20103, verifier, f"{h}.{p}.{mint_signature(f'{h}.{p}')}")


def test_wrong_subject(verifier: TokenVerifier) -> None:
    expect(20103, verifier, forge(claims(sub="AC" + "0" * 32)))
    expect(20103, verifier, forge(claims(sub=None)))


def test_tampered_payload(verifier: TokenVerifier) -> None:
    header, _, signature = official().split(".")
    payload = claims(grants={"identity": "mallory", "data_sync": {"service_sid": SERVICE}})
    expect(20107, verifier, f"{header}.{b64(orjson.dumps(payload))}.{signature}", now=time.time())


def test_truncated_or_noncanonical_signature(verifier: TokenVerifier) -> None:
    token = official()
    expect(20107, verifier, token[:-2], now=time.time())
    expect(20107, verifier, token[: token.rindex(".") + 1], now=time.time())  # signature stripped
    # 32 MAC bytes take 43 base64 characters: the last one carries 2 unused bits, so flipping them
    # decodes to the same bytes. Such a twin must still be refused.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin.split(".")[2] + "=") == base64.urlsafe_b64decode(
        token.split(".")[2] + "="
    )
    expect(20107, verifier, twin, now=time.time())


# --- header and shape -----------------------------------------------------------------------------------


def test_alg_none(verifier: TokenVerifier) -> None:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    payload = b64(orjson.dumps(claims()))
    expect(20102, verifier, f"{header}.{payload}.")  # the unsecured form: empty signature segment
    expect(20102, verifier, f"{header}.{payload}.{mint_signature(f'{header}.{payload}')}")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS512", "typ": "JWT"},
        {"alg": "RS256", "typ": "JWT"},
        {"alg": "HS256", "typ": "JWE"},
        {"alg": "HS256", "cty": "twilio-fpa;v=2"},
        {"alg": "HS256", "crit": ["exp"]},
        {"typ": "JWT"},
    ],
)
def test_invalid_header(verifier: TokenVerifier, header: dict[str, Any]) -> None:
    h = b64(orjson.dumps(header))
    p = b64(orjson.dumps(claims()))
    expect(20102, verifier, f"{h}.{p}.{mint_signature(f'{h}.{p}')}")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "e30.e30",
        "bm90IGpzb24.e30.sig",  # header is base64 of "not json"
        "WzFd.e30.sig",  # header is a JSON array
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.sig",  # payload is not JSON
        "eyJhbGciOiJIUzI1NiJ9.WzFd.sig",  # payload is a JSON array
        "eyJhbGciOiJIUzI1NiJ9.e30xx.sig",  # payload is not valid base64 (length 1 mod 4)
        "e30.e30.sig".replace("e30", "eyJhbGciOiJIUzI1NiJ9", 1) + "x" * 9000,  # too long
        "eyJhbGciOiJIUzI1NiJ9.\u00e9.sig",  # non-ASCII
    ],
)
def test_malformed(verifier: TokenVerifier, token: str) -> None:
    expect(20101, verifier, token)


# --- grants ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grants",
    [
        None,
        "alice",
        {"data_sync": {"service_sid": SERVICE}},
        {"identity": "", "data_sync": {}},
        {"identity": 42},
        {"identity": "x" * 257},
        {"identity": "alice", "data_sync": "IS"},
        {"identity": "alice", "data_sync": {"service_sid": 7}},
        {"identity": "alice", "data_sync": {"service_sid": ""}},
        {"identity": "alice"},  # no Sync grant at all
        {"identity": "alice", "data_sync": None},
        {"identity": "alice", "video": {"room": "r"}},
    ],
)
def test_invalid_grants(verifier: TokenVerifier, grants: object) -> None:
    expect(20106, verifier, forge(claims(grants=grants)))


def test_official_token_without_a_sync_grant(verifier: TokenVerifier) -> None:
    err = expect(20106, verifier, official(service=None), now=time.time())
    assert "Sync" in err.message
    video = AccessToken(ACCOUNT, KEY, SECRET, identity="alice")
    video.add_grant(VideoGrant(room="r"))
    expect(20106, verifier, str(video.to_jwt()), now=time.time())


def test_official_token_without_identity(verifier: TokenVerifier) -> None:
    expect(20106, verifier, official(identity=None), now=time.time())


def test_identity_at_the_limit(verifier: TokenVerifier) -> None:
    token = forge(claims(grants={"identity": "x" * 256, "data_sync": {}}))
    assert verifier.verify(token, now=NOW).identity == "x" * 256


def test_errors_form_one_family() -> None:
    for cls in (
        InvalidAccessTokenHeader,
        InvalidAccessTokenIssuer,
        AccessTokenExpired,
        AccessTokenNotYetValid,
        InvalidAccessTokenGrants,
        InvalidAccessTokenSignature,
        AccessTokenLifetimeExceeded,
    ):
        assert issubclass(cls, InvalidAccessToken)
