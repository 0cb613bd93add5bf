"""JwtVerifier against real keys, real python-jose tokens and a real JWKS HTTP server.

Each attack from docs/security checklist section 1 is one test: crafted with real RSA/EC
keys and HMAC secrets, never with a mocked library. Async code runs under asyncio.run,
like the rest of the suite.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwe, jwk, jwt
from structlog.testing import capture_logs

from service.security.jwt import JwtVerifier
from service.security.principal import AuthFailure, Principal
from service.settings import ConfigError, JwtSettings
from tests.support.ports import free_port

ISS = "https://idp.example.test/"
AUD = "graphgate-api"
HS_SECRET = "hs-" + secrets.token_urlsafe(40)  # random per run, like a real one
DROP = object()  # a claim to leave out


# --- keys and tokens -------------------------------------------------------------------


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """A real RSA key per name, generated once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str, curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
    return ec.generate_private_key(curves[curve])


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    family = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"  # any of the family
    entry: dict[str, Any] = jwk.construct(public_pem(key), family).to_dict()
    entry.pop("alg")  # most identity providers leave it out; tests add it where it matters
    if kid is not None:
        entry["kid"] = kid
    return {**entry, "use": "sig", **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS, "aud": AUD, "sub": "user-1", "tenant": "acme", "iat": now,
        "exp": now + 300, "scope": "threads:read runs:create",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not DROP}


def sign(payload: dict[str, Any], key: PrivateKey | str, alg: str, **headers: Any) -> str:
    # A key object, not PEM: parsing a private PEM costs ~70 ms a token.
    return str(jwt.encode(payload, jwk.construct(key, alg), algorithm=alg,
                          headers=headers or None))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any] | bytes,
              key: PrivateKey | str | bytes, alg: str) -> str:
    """A JWS built by hand, for headers and payloads python-jose would not produce."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    if isinstance(key, bytes):  # forge: HMAC with arbitrary bytes as the secret
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    else:
        signature = jwk.construct(key, alg).sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def segments(token: str) -> list[str]:
    return token.split(".")


# --- settings and running the verifier -----------------------------------------------


def base_settings(**values: Any) -> JwtSettings:
    return JwtSettings(**{"issuer": ISS, "audience": AUD, **values})


def hs_settings(**values: Any) -> JwtSettings:
    return base_settings(algorithms=["HS256"], secret=HS_SECRET, **values)


def pem_settings(tmp_path: Path, key: PrivateKey, algorithms: list[str],
                 **values: Any) -> JwtSettings:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(key))
    return base_settings(algorithms=algorithms, public_key_file=path, **values)


def jwks_settings(tmp_path: Path, entries: list[dict[str, Any]], algorithms: list[str],
                  **values: Any) -> JwtSettings:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": entries}))
    return base_settings(algorithms=algorithms, jwks_file=path, **values)


@pytest.fixture
def rs_settings(tmp_path: Path) -> JwtSettings:
    return pem_settings(tmp_path, rsa_key("a"), ["RS256"])


async def verify_once(settings: JwtSettings, token: str) -> Principal:
    verifier = JwtVerifier(settings)
    await verifier.start()
    try:
        return await verifier.verify(token)
    finally:
        await verifier.aclose()


def accept(settings: JwtSettings, token: str) -> Principal:
    return asyncio.run(verify_once(settings, token))


def refusal(settings: JwtSettings, token: str) -> str:
    with pytest.raises(AuthFailure) as info:
        accept(settings, token)
    assert str(info.value) == info.value.reason  # the reason only: no token, no detail
    return info.value.reason


# --- valid tokens ----------------------------------------------------------------------


EXPECTED = Principal(tenant="acme", subject="user-1", method="jwt", key_id=None,
                     scopes=frozenset({"threads:read", "runs:create"}), rate_limit=None)


def test_valid_rs256_with_a_pem_public_key(rs_settings: JwtSettings) -> None:
    assert accept(rs_settings, sign(claims(), rsa_key("a"), "RS256")) == EXPECTED


def test_valid_es256_with_a_pem_public_key(tmp_path: Path) -> None:
    settings = pem_settings(tmp_path, ec_key("a"), ["ES256"])
    assert accept(settings, sign(claims(), ec_key("a"), "ES256")) == EXPECTED


def test_valid_hs256_with_a_secret() -> None:
    assert accept(hs_settings(), sign(claims(), HS_SECRET, "HS256")) == EXPECTED


def test_valid_hs256_with_a_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(HS_SECRET + "\n")  # the newline `echo` adds is not part of the secret
    settings = base_settings(algorithms=["HS256"], secret_file=path)
    assert accept(settings, sign(claims(), HS_SECRET, "HS256")) == EXPECTED


def test_valid_tokens_from_a_jwks_file_rs256_and_es384(tmp_path: Path) -> None:
    entries = [public_jwk(rsa_key("a"), "rsa-1"),
               public_jwk(ec_key("b", "P-384"), "ec-1")]
    settings = jwks_settings(tmp_path, entries, ["RS256", "ES384"])
    assert accept(settings, sign(claims(), rsa_key("a"), "RS256", kid="rsa-1")) == EXPECTED
    assert accept(settings, sign(claims(), ec_key("b", "P-384"), "ES384", kid="ec-1")) == EXPECTED


def test_a_pem_certificate_works_as_the_public_key(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = rsa_key("a")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    settings = base_settings(algorithms=["RS256"], public_key_file=path)
    assert accept(settings, sign(claims(), key, "RS256")) == EXPECTED


# --- algorithm attacks -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", None, "", "HS256", "PS256", "EdDSA"])
def test_alg_outside_the_allowlist_is_refused(rs_settings: JwtSettings, alg: str | None) -> None:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    unsigned = f"{header}.{b64(json.dumps(claims()).encode())}."
    assert refusal(rs_settings, unsigned) == "bad_alg"
    assert refusal(rs_settings, unsigned + "c2lnbmF0dXJl") == "bad_alg"


def test_missing_alg_is_refused(rs_settings: JwtSettings) -> None:
    token = raw_token({"typ": "JWT"}, claims(), rsa_key("a"), "RS256")
    assert refusal(rs_settings, token) == "bad_alg"


def _public_key_encodings(key: rsa.RSAPrivateKey) -> list[bytes]:
    public = key.public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return [
        public_pem(key),
        public_pem(key).strip(),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        der,
        base64.b64encode(der),
        json.dumps(public_jwk(key, None)).encode(),
    ]


@pytest.mark.parametrize("encoding", range(7))
def test_hs256_forged_with_the_public_key_is_refused(rs_settings: JwtSettings,
                                                     encoding: int) -> None:
    secret = _public_key_encodings(rsa_key("a"))[encoding]
    forged = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), secret, "HS256")
    assert refusal(rs_settings, forged) == "bad_alg"
    # The same HMAC under an allowed alg name fails on the signature.
    relabelled = raw_token({"alg": "RS256", "typ": "JWT"}, claims(), secret, "HS256")
    assert refusal(rs_settings, relabelled) == "bad_signature"


def test_alg_of_the_wrong_key_type_is_refused(tmp_path: Path) -> None:
    # Both algorithms are allowed, but the configured key is RSA: ES256 cannot select it.
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256", "ES256"])
    assert refusal(settings, sign(claims(), ec_key("a"), "ES256")) == "bad_alg"


def test_es256_with_a_p384_key_is_refused(tmp_path: Path) -> None:
    # RFC 7518 ties ES256 to P-256; python-jose alone would verify SHA-256 over P-384.
    key = ec_key("b", "P-384")
    settings = jwks_settings(tmp_path, [public_jwk(key, "k")], ["ES256", "ES384"])
    assert refusal(settings, sign(claims(), key, "ES256", kid="k")) == "bad_alg"


# --- signature and claims --------------------------------------------------------------


def test_tampered_payload_is_refused(rs_settings: JwtSettings) -> None:
    header, _, signature = segments(sign(claims(), rsa_key("a"), "RS256"))
    payload = b64(json.dumps(claims(tenant="other-tenant")).encode())
    assert refusal(rs_settings, f"{header}.{payload}.{signature}") == "bad_signature"


def test_tampered_or_missing_signature_is_refused(rs_settings: JwtSettings) -> None:
    header, payload, signature = segments(sign(claims(), rsa_key("a"), "RS256"))
    middle = len(signature) // 2
    other = "A" if signature[middle] != "A" else "B"
    flipped = signature[:middle] + other + signature[middle + 1:]
    assert refusal(rs_settings, f"{header}.{payload}.{flipped}") == "bad_signature"
    assert refusal(rs_settings, f"{header}.{payload}.") == "bad_signature"


def test_token_signed_by_another_key_is_refused(rs_settings: JwtSettings) -> None:
    assert refusal(rs_settings, sign(claims(), rsa_key("b"), "RS256")) == "bad_signature"


def test_wrong_hmac_secret_is_refused() -> None:
    token = sign(claims(), "another-" + secrets.token_urlsafe(40), "HS256")
    assert refusal(hs_settings(), token) == "bad_signature"


def test_expired_is_refused_and_leeway_applies(rs_settings: JwtSettings) -> None:
    now = int(time.time())
    assert refusal(rs_settings, sign(claims(exp=now - 120), rsa_key("a"), "RS256")) == "expired"
    assert accept(rs_settings, sign(claims(exp=now - 10, iat=now - 60), rsa_key("a"), "RS256"))


def test_nbf_in_the_future_is_refused(rs_settings: JwtSettings) -> None:
    token = sign(claims(nbf=int(time.time()) + 300), rsa_key("a"), "RS256")
    assert refusal(rs_settings, token) == "not_yet_valid"


def test_wrong_or_missing_issuer_is_refused(rs_settings: JwtSettings) -> None:
    wrong = sign(claims(iss="https://evil.example.test/"), rsa_key("a"), "RS256")
    assert refusal(rs_settings, wrong) == "bad_issuer"
    assert refusal(rs_settings, sign(claims(iss=DROP), rsa_key("a"), "RS256")) == "missing_claim"


def test_wrong_audience_is_refused_and_a_list_may_contain_ours(rs_settings: JwtSettings) -> None:
    wrong = sign(claims(aud="another-api"), rsa_key("a"), "RS256")
    assert refusal(rs_settings, wrong) == "bad_audience"
    assert accept(rs_settings, sign(claims(aud=["another-api", AUD]), rsa_key("a"), "RS256"))


def test_missing_audience_is_refused(rs_settings: JwtSettings) -> None:
    # python-jose alone accepts this token although audience= is given.
    assert refusal(rs_settings, sign(claims(aud=DROP), rsa_key("a"), "RS256")) == "missing_claim"


@pytest.mark.parametrize("claim", ["exp", "sub", "iat"])
def test_missing_required_claim_is_refused(rs_settings: JwtSettings, claim: str) -> None:
    token = sign(claims(**{claim: DROP}), rsa_key("a"), "RS256")
    assert refusal(rs_settings, token) == "missing_claim"


def test_iat_is_optional_without_a_max_age(tmp_path: Path) -> None:
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], max_token_age_s=None)
    assert accept(settings, sign(claims(iat=DROP), rsa_key("a"), "RS256")) == EXPECTED


@pytest.mark.parametrize(("exp", "reason"), [
    ([], "invalid"), (None, "invalid"), ({}, "invalid"), ("9999999999", "invalid"),
    (float("inf"), "invalid"), (float("nan"), "invalid"), (True, "expired"),
])
def test_odd_exp_values_are_refused_cleanly(rs_settings: JwtSettings, exp: Any,
                                            reason: str) -> None:
    # [], null and {} make python-jose raise a bare TypeError, Infinity an OverflowError,
    # and python-jose would take the numeric string.
    assert refusal(rs_settings, sign(claims(exp=exp), rsa_key("a"), "RS256")) == reason


def test_fractional_exp_is_a_valid_numeric_date(rs_settings: JwtSettings) -> None:
    token = sign(claims(exp=time.time() + 300.5), rsa_key("a"), "RS256")
    assert accept(rs_settings, token) == EXPECTED


@pytest.mark.parametrize(("claim", "value"), [
    ("nbf", []), ("nbf", "0"), ("iat", "0"), ("iat", None), ("iat", float("inf")),
    ("sub", 42), ("sub", ["user-1"]), ("aud", {"x": AUD}), ("iss", [ISS]),
])
def test_odd_claim_types_are_refused(rs_settings: JwtSettings, claim: str, value: Any) -> None:
    refusal(rs_settings, sign(claims(**{claim: value}), rsa_key("a"), "RS256"))


HUGE = 10**400  # exact in JSON and Python, but no float can hold it


@pytest.mark.parametrize("max_age", [86_400, None])
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [HUGE, -HUGE, 10**30, -(10**30), 1e300, -1e300,
                                   253_402_300_800, -253_402_300_800])
def test_out_of_range_time_claims_are_refused_cleanly(claim: str, value: int | float,
                                                      max_age: int | None) -> None:
    """A validly signed token with an absurd NumericDate is an AuthFailure, never a 500.

    `10**400` made math.isfinite() and `now - iat` raise OverflowError after the decode;
    `exp: 10**30` was accepted as valid for ever and `nbf: -10**400` as always valid.
    """
    settings = hs_settings(max_token_age_s=max_age)
    token = sign(claims(**{claim: value}), HS_SECRET, "HS256")
    assert refusal(settings, token) in {"invalid", "expired", "not_yet_valid", "too_old"}


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_every_time_claim_check_ends_in_auth_failure(claim: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an arithmetic error in a post-decode check becomes AuthFailure("invalid")."""
    def overflow(self: JwtVerifier, payload: Any) -> None:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(JwtVerifier, "_check_times", overflow)
    token = sign(claims(), HS_SECRET, "HS256")
    assert refusal(hs_settings(), token) == "invalid"


def test_time_claims_up_to_the_year_9999_are_numbers(rs_settings: JwtSettings) -> None:
    """The range check leaves real tokens alone: a far but representable `exp` is fine."""
    token = sign(claims(exp=253_402_300_799), rsa_key("a"), "RS256")
    assert accept(rs_settings, token) == EXPECTED


def test_deeply_nested_payload_is_refused_cleanly() -> None:
    payload = b"[" * 2900 + b"]" * 2900  # RecursionError inside python-jose's json.loads
    token = raw_token({"alg": "HS256", "typ": "JWT"}, payload, HS_SECRET, "HS256")
    assert refusal(hs_settings(), token) == "invalid"


def test_too_old_token_is_refused(tmp_path: Path) -> None:
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], max_token_age_s=3600)
    now = int(time.time())
    old = sign(claims(iat=now - 3600 - 30 - 5, exp=now + 300), rsa_key("a"), "RS256")
    assert refusal(settings, old) == "too_old"
    within_leeway = sign(claims(iat=now - 3600 - 10, exp=now + 300), rsa_key("a"), "RS256")
    assert accept(settings, within_leeway) == EXPECTED


def test_iat_in_the_future_is_refused(rs_settings: JwtSettings) -> None:
    token = sign(claims(iat=int(time.time()) + 300), rsa_key("a"), "RS256")
    assert refusal(rs_settings, token) == "not_yet_valid"


def test_age_uses_the_injected_clock(rs_settings: JwtSettings) -> None:
    token = sign(claims(), rsa_key("a"), "RS256")

    async def scenario() -> None:
        verifier = JwtVerifier(rs_settings, clock=lambda: time.time() + 86_400 + 31)
        await verifier.start()
        with pytest.raises(AuthFailure, match="too_old"):
            await verifier.verify(token)

    asyncio.run(scenario())


# --- shape, size and header checks -----------------------------------------------------


def test_oversized_token_is_refused_before_decoding(rs_settings: JwtSettings) -> None:
    token = sign(claims(padding="x" * 9000), rsa_key("a"), "RS256")
    assert len(token) > 8192
    assert refusal(rs_settings, token) == "too_large"


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c", "a.b.c.d", "a.b.c.d.e", ".b.c", "a..c", " a.b.c", "a.b.c\n",
    "a.b.c\u00e9", "a+b.c/d.e=f",
])
def test_malformed_token_is_refused(rs_settings: JwtSettings, token: str) -> None:
    assert refusal(rs_settings, token) == "malformed"


def test_jwe_is_never_decrypted(rs_settings: JwtSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    token = jwe.encrypt(json.dumps(claims()), secrets.token_bytes(32), algorithm="dir",
                        encryption="A256GCM").decode()
    assert len(segments(token)) == 5

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("jwe.decrypt was called")

    monkeypatch.setattr(jwe, "decrypt", tripwire)
    assert refusal(rs_settings, token) == "malformed"


@pytest.mark.parametrize("header", [b"notjson", b"[1, 2]", b'"alg"', b"{"])
def test_unparseable_header_is_refused(rs_settings: JwtSettings, header: bytes) -> None:
    _, payload, signature = segments(sign(claims(), rsa_key("a"), "RS256"))
    assert refusal(rs_settings, f"{b64(header)}.{payload}.{signature}") == "malformed"


@pytest.mark.parametrize("crit", [["exp"], [], ["b64"]])
def test_crit_header_is_refused(rs_settings: JwtSettings, crit: list[str]) -> None:
    token = sign(claims(), rsa_key("a"), "RS256", crit=crit)
    assert refusal(rs_settings, token) == "unsupported_crit"


@pytest.mark.parametrize(("typ", "accepted"), [
    ("at+jwt", True), ("AT+JWT", True), ("application/at+jwt", True), ("JWT", False),
    ("jwt", False), (None, False), (["at+jwt"], False), (DROP, False),
])
def test_typ_is_enforced_when_configured(tmp_path: Path, typ: Any, accepted: bool) -> None:
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], token_types=["at+jwt"])
    header = {"alg": "RS256"} if typ is DROP else {"alg": "RS256", "typ": typ}
    token = raw_token(header, claims(), rsa_key("a"), "RS256")
    if accepted:
        assert accept(settings, token) == EXPECTED
    else:
        assert refusal(settings, token) == "bad_typ"


def test_typ_is_free_when_not_configured(rs_settings: JwtSettings) -> None:
    token = raw_token({"alg": "RS256", "typ": "id_token+jwt"}, claims(), rsa_key("a"), "RS256")
    assert accept(rs_settings, token) == EXPECTED


def test_embedded_key_headers_are_ignored(tmp_path: Path) -> None:
    attacker = rsa_key("attacker")
    headers = {"kid": "k1", "jwk": public_jwk(attacker, "k1"),
               "jku": "https://evil.example.test/jwks.json",
               "x5u": "https://evil.example.test/cert.pem"}
    pem = pem_settings(tmp_path, rsa_key("a"), ["RS256"])
    assert refusal(pem, sign(claims(), attacker, "RS256", **headers)) == "bad_signature"
    jwks = jwks_settings(tmp_path, [public_jwk(rsa_key("a"), "k1")], ["RS256"])
    assert refusal(jwks, sign(claims(), attacker, "RS256", **headers)) == "bad_signature"


# --- kid selection in a JWKS -----------------------------------------------------------


@pytest.fixture
def two_key_jwks(tmp_path: Path) -> JwtSettings:
    entries = [public_jwk(rsa_key("a"), "k1"), public_jwk(rsa_key("b"), "k2")]
    return jwks_settings(tmp_path, entries, ["RS256"])


def test_kid_selects_the_key(two_key_jwks: JwtSettings) -> None:
    assert accept(two_key_jwks, sign(claims(), rsa_key("a"), "RS256", kid="k1")) == EXPECTED
    assert accept(two_key_jwks, sign(claims(), rsa_key("b"), "RS256", kid="k2")) == EXPECTED


@pytest.mark.parametrize("kid", ["k3", "K1", "k1 ", "", 1, ["k1"], DROP])
def test_unknown_or_missing_kid_is_refused(two_key_jwks: JwtSettings, kid: Any) -> None:
    headers = {} if kid is DROP else {"kid": kid}
    token = sign(claims(), rsa_key("a"), "RS256", **headers)
    assert refusal(two_key_jwks, token) == "unknown_kid"


def test_kid_injection_is_refused(two_key_jwks: JwtSettings) -> None:
    # Signed by k2's key but labelled k1: python-jose alone would try every key and accept.
    token = sign(claims(), rsa_key("b"), "RS256", kid="k1")
    assert refusal(two_key_jwks, token) == "bad_signature"


def test_shared_kid_is_told_apart_by_key_type_only(tmp_path: Path) -> None:
    # RFC 7517 §4.5 allows one kid for keys of different types; same type is ambiguous,
    # so the later duplicate is dropped.
    entries = [public_jwk(rsa_key("a"), "shared"), public_jwk(ec_key("a"), "shared"),
               public_jwk(rsa_key("b"), "shared")]
    settings = jwks_settings(tmp_path, entries, ["RS256", "ES256"])
    assert accept(settings, sign(claims(), rsa_key("a"), "RS256", kid="shared")) == EXPECTED
    assert accept(settings, sign(claims(), ec_key("a"), "ES256", kid="shared")) == EXPECTED
    duplicate = sign(claims(), rsa_key("b"), "RS256", kid="shared")
    assert refusal(settings, duplicate) == "bad_signature"


def test_one_key_jwks_accepts_a_token_without_kid(tmp_path: Path) -> None:
    settings = jwks_settings(tmp_path, [public_jwk(rsa_key("a"), "k1")], ["RS256"])
    assert accept(settings, sign(claims(), rsa_key("a"), "RS256")) == EXPECTED


def test_unfit_jwks_keys_are_not_usable(tmp_path: Path) -> None:
    entries = [
        public_jwk(rsa_key("a"), "k1"),
        public_jwk(rsa_key("a"), "enc", use="enc"),
        public_jwk(rsa_key("a"), "ops", key_ops=["encrypt"]),
        public_jwk(rsa_key("a"), "rs512", alg="RS512"),
        {"kty": "oct", "kid": "oct", "k": b64(HS_SECRET.encode())},
        public_jwk(rsa_key("small", 1024), "small"),
    ]
    settings = jwks_settings(tmp_path, entries, ["RS256"])
    for kid in ("enc", "ops", "rs512", "oct", "small"):
        key = rsa_key("small", 1024) if kid == "small" else rsa_key("a")
        assert refusal(settings, sign(claims(), key, "RS256", kid=kid)) == "unknown_kid", kid
    oct_forgery = sign(claims(), HS_SECRET, "HS256", kid="oct")
    assert refusal(settings, oct_forgery) == "bad_alg"


# --- identity claims -------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "expected"), [
    ("threads:read  runs:create", {"threads:read", "runs:create"}),
    (["threads:read", "runs:create"], {"threads:read", "runs:create"}),
    (["threads:read", "two words", ""], {"threads:read"}),
    (["threads:read", 7], set()), ({"threads:read": True}, set()), (7, set()), (DROP, set()),
])
def test_scopes_from_a_string_or_a_list(rs_settings: JwtSettings, scope: Any,
                                        expected: set[str]) -> None:
    principal = accept(rs_settings, sign(claims(scope=scope), rsa_key("a"), "RS256"))
    assert principal.scopes == frozenset(expected)


def test_scopes_claim_name_is_configurable(tmp_path: Path) -> None:
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], scopes_claim="scp")
    token = sign(claims(scp=["threads:write"]), rsa_key("a"), "RS256")
    assert accept(settings, token).scopes == frozenset({"threads:write"})


def test_missing_tenant_without_default_is_refused(rs_settings: JwtSettings) -> None:
    token = sign(claims(tenant=DROP), rsa_key("a"), "RS256")
    assert refusal(rs_settings, token) == "missing_tenant"


def test_missing_tenant_uses_the_default(tmp_path: Path) -> None:
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], default_tenant="main")
    assert accept(settings, sign(claims(tenant=DROP), rsa_key("a"), "RS256")).tenant == "main"
    assert accept(settings, sign(claims(), rsa_key("a"), "RS256")).tenant == "acme"


def test_tenant_claim_name_is_configurable(tmp_path: Path) -> None:
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], tenant_claim="org_id")
    token = sign(claims(org_id="org-7"), rsa_key("a"), "RS256")
    assert accept(settings, token).tenant == "org-7"


@pytest.mark.parametrize("tenant", [
    "", "   ", "a\x00b", "a\nb", "a\u202eb", "x" * 129, 5, None, ["acme"], "a/b", "a:b",
])
def test_bad_tenant_is_refused(tmp_path: Path, tenant: Any) -> None:
    # Present but unusable: never silently replaced by the default tenant.
    settings = pem_settings(tmp_path, rsa_key("a"), ["RS256"], default_tenant="main")
    assert refusal(settings, sign(claims(tenant=tenant), rsa_key("a"), "RS256")) == "bad_tenant"


@pytest.mark.parametrize("subject", ["", "u\x07", "u\u200bv", "x" * 129])
def test_bad_subject_is_refused(rs_settings: JwtSettings, subject: str) -> None:
    token = sign(claims(sub=subject), rsa_key("a"), "RS256")
    assert refusal(rs_settings, token) == "bad_subject"


def test_identifiers_up_to_128_characters_are_accepted(rs_settings: JwtSettings) -> None:
    token = sign(claims(sub="s" * 128, tenant="t" * 128), rsa_key("a"), "RS256")
    principal = accept(rs_settings, token)
    assert (principal.subject, principal.tenant) == ("s" * 128, "t" * 128)


def test_rate_limit_claim(rs_settings: JwtSettings) -> None:
    token = sign(claims(rate_limit="10/minute;100/hour"), rsa_key("a"), "RS256")
    assert accept(rs_settings, token).rate_limit == "10/minute;100/hour"
    assert accept(rs_settings, sign(claims(), rsa_key("a"), "RS256")).rate_limit is None


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "", 10, ["10/minute"]])
def test_invalid_rate_limit_claim_is_ignored_and_logged(rs_settings: JwtSettings,
                                                        value: Any) -> None:
    with capture_logs() as logs:
        principal = accept(rs_settings, sign(claims(rate_limit=value), rsa_key("a"), "RS256"))
    assert principal.rate_limit is None
    assert [entry["event"] for entry in logs] == ["jwt_rate_limit_ignored"]


def test_failures_never_log_or_carry_the_token_or_secret() -> None:
    settings = hs_settings()
    tokens = [
        sign(claims(rate_limit="bogus"), HS_SECRET, "HS256"),
        sign(claims(exp=int(time.time()) - 600), HS_SECRET, "HS256"),
        sign(claims(exp=[]), HS_SECRET, "HS256"),
        sign(claims(), "wrong-" + secrets.token_urlsafe(40), "HS256"),
    ]

    async def scenario() -> list[str]:
        verifier = JwtVerifier(settings)
        await verifier.start()
        messages = []
        for token in tokens:
            try:
                await verifier.verify(token)
            except AuthFailure as failure:
                messages.append(repr(failure) + repr(failure.__cause__) + repr(failure.__context__))
        return messages

    with capture_logs() as logs:
        messages = asyncio.run(scenario())
    text = repr(logs) + repr(messages)
    assert len(messages) == 3
    for secret in [HS_SECRET, *tokens, *(part for t in tokens for part in segments(t))]:
        assert secret not in text


def test_verify_before_start_is_a_programming_error(rs_settings: JwtSettings) -> None:
    token = sign(claims(), rsa_key("a"), "RS256")
    with pytest.raises(RuntimeError, match="before start"):
        asyncio.run(JwtVerifier(rs_settings).verify(token))


# --- start-up errors -------------------------------------------------------------------


def start_error(settings: JwtSettings) -> str:
    with pytest.raises(ConfigError) as info:
        asyncio.run(JwtVerifier(settings).start())
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_key_files_refuse_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for field, algorithms in (("secret_file", ["HS256"]), ("public_key_file", ["RS256"]),
                              ("jwks_file", ["RS256"])):
        message = start_error(base_settings(algorithms=algorithms, **{field: missing}))
        assert f"auth.jwt.{field}" in message and "cannot be read" in message
        assert f"GRAPHGATE_AUTH__JWT__{field.upper()}" in message


@pytest.mark.parametrize(("content", "problem"), [
    ("short-secret-1", "shorter than 32 bytes"),
    ("ab" * 40, "too few distinct characters"),
    ("", "shorter than 32 bytes"),
])
def test_weak_secret_file_refuses_to_start(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    message = start_error(base_settings(algorithms=["HS256"], secret_file=path))
    assert problem in message
    if content:
        assert content not in message


@pytest.mark.parametrize(("algorithm", "length"), [("HS384", 48), ("HS512", 64)])
def test_secret_file_shorter_than_the_hash_refuses_to_start(tmp_path: Path, algorithm: str,
                                                            length: int) -> None:
    """RFC 7518 3.2, as settings enforce for `secret`: HS384 needs 48 bytes, HS512 64."""
    short = secrets.token_urlsafe(64)[: length - 1]  # passes the 32-byte and randomness checks
    path = tmp_path / "secret"
    path.write_text(short + "\n")
    message = start_error(base_settings(algorithms=[algorithm], secret_file=path))
    assert f"shorter than {length} bytes" in message and algorithm in message
    assert "auth.jwt.secret_file" in message and str(path) in message
    assert short not in message

    enough = secrets.token_urlsafe(64)[:length]
    path.write_text(enough + "\n")
    settings = base_settings(algorithms=[algorithm], secret_file=path)
    assert accept(settings, sign(claims(), enough, algorithm)) == EXPECTED


def test_pem_as_hmac_secret_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(public_pem(rsa_key("a")))
    message = start_error(base_settings(algorithms=["HS256"], secret_file=path))
    assert "not usable" in message and "BEGIN" not in message


def test_non_utf8_secret_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(secrets.token_bytes(48) + b"\xff\xfe")
    assert "not UTF-8" in start_error(base_settings(algorithms=["HS256"], secret_file=path))


@pytest.mark.parametrize(("content", "problem", "algorithms"), [
    (b"not a key", "not a PEM public key", ["RS256"]),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM", ["RS256"]),
    (private_pem(rsa_key("a")), "private key", ["RS256"]),
    (public_pem(rsa_key("small", 1024)), "1024-bit RSA key", ["RS256"]),
    (public_pem(ec_key("a")), "fits none of the algorithms", ["RS256"]),
    (public_pem(ec_key("b", "P-384")), "fits none of the algorithms", ["ES256"]),
])
def test_bad_public_key_file_refuses_to_start(tmp_path: Path, content: bytes, problem: str,
                                              algorithms: list[str]) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    message = start_error(base_settings(algorithms=algorithms, public_key_file=path))
    assert problem in message and str(path) in message
    assert "PRIVATE" not in message


def test_bad_jwks_file_refuses_to_start(tmp_path: Path) -> None:
    private = jwk.construct(private_pem(rsa_key("a")), "RS256").to_dict()
    cases = [
        ("{not json", "is not JSON"),
        (json.dumps({"keys": 5}), "is not a JWKS"),
        (json.dumps([public_jwk(rsa_key("a"), "k")]), "is not a JWKS"),
        (json.dumps({"keys": []}), "no usable key"),
        (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "no usable key"),
        (json.dumps({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}), "no usable key"),
        (json.dumps({"keys": [private]}), "private key material"),
    ]
    path = tmp_path / "jwks.json"
    for content, problem in cases:
        path.write_text(content)
        message = start_error(base_settings(algorithms=["RS256"], jwks_file=path))
        assert problem in message, (content, message)
        assert private["d"] not in message


# --- JWKS URL: a real HTTP server --------------------------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 whose document and status the test changes."""

    def __init__(self) -> None:
        self.document: object = {"keys": []}
        self.status = 200
        self.requests = 0
        self._lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def publish(self, *keys: tuple[str, PrivateKey]) -> None:
        self.document = {"keys": [public_jwk(key, kid) for kid, key in keys]}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests += 1
                    status, body = server.status, json.dumps(server.document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The client hanging up mid-body (the size cap) is expected; anything else is not.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


def url_settings(url: str, **values: Any) -> JwtSettings:
    return base_settings(algorithms=["RS256"], jwks_url=url, jwks_cache_ttl_s=600,
                         jwks_min_refetch_interval_s=60, **values)


def token_for(kid: str, key: PrivateKey) -> str:
    return sign(claims(), key, "RS256", kid=kid)


async def expect_refusal(verifier: JwtVerifier, token: str, reason: str) -> None:
    with pytest.raises(AuthFailure) as info:
        await verifier.verify(token)
    assert info.value.reason == reason


def test_jwks_rotation_new_kid_works_after_refetch(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.publish(("k1", rsa_key("a")))

    async def scenario() -> None:
        verifier = JwtVerifier(url_settings(jwks_server.url), clock=clock)
        await verifier.start()
        try:
            assert jwks_server.requests == 1
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
            jwks_server.publish(("k1", rsa_key("a")), ("k2", rsa_key("b")))
            # Right after a fetch, an unknown kid may not trigger another one.
            await expect_refusal(verifier, token_for("k2", rsa_key("b")), "unknown_kid")
            assert jwks_server.requests == 1
            clock.advance(61)
            assert await verifier.verify(token_for("k2", rsa_key("b"))) == EXPECTED
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
            assert jwks_server.requests == 2
        finally:
            await verifier.aclose()

    asyncio.run(scenario())


def test_random_kid_flood_gives_exactly_one_fetch(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.publish(("k1", rsa_key("a")))

    async def scenario() -> None:
        verifier = JwtVerifier(url_settings(jwks_server.url), clock=clock)
        await verifier.start()
        try:
            clock.advance(61)
            flood = [token_for(uuid.uuid4().hex, rsa_key("a")) for _ in range(50)]
            results = await asyncio.gather(*(verifier.verify(t) for t in flood),
                                           return_exceptions=True)
            assert all(isinstance(r, AuthFailure) and r.reason == "unknown_kid" for r in results)
            for token in flood[:10]:
                await expect_refusal(verifier, token, "unknown_kid")
            assert jwks_server.requests == 2  # start-up, then one for the whole flood
            clock.advance(59)
            await expect_refusal(verifier, flood[0], "unknown_kid")
            assert jwks_server.requests == 2
            clock.advance(1)
            await expect_refusal(verifier, flood[0], "unknown_kid")
            assert jwks_server.requests == 3
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
        finally:
            await verifier.aclose()

    asyncio.run(scenario())


def test_jwks_outage_keeps_serving_cached_keys(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.publish(("k1", rsa_key("a")))

    async def scenario() -> None:
        verifier = JwtVerifier(url_settings(jwks_server.url), clock=clock)
        await verifier.start()
        try:
            jwks_server.status = 503
            clock.advance(601)  # past the TTL: a refetch is due and fails
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
            assert jwks_server.requests == 2
            jwks_server.stop()  # now nothing listens at all
            clock.advance(61)
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
            await expect_refusal(verifier, token_for("k9", rsa_key("b")), "unknown_kid")
        finally:
            await verifier.aclose()

    with capture_logs() as logs:
        asyncio.run(scenario())
    failures = [entry for entry in logs if entry["event"] == "jwks_refresh_failed"]
    assert len(failures) == 2
    assert all(entry["log_level"] == "warning" and entry["cached_keys"] == 1
               for entry in failures)
    assert "503" in failures[0]["error"]


def test_removed_key_stops_working_after_the_ttl(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.publish(("k1", rsa_key("a")), ("k2", rsa_key("b")))

    async def scenario() -> None:
        verifier = JwtVerifier(url_settings(jwks_server.url), clock=clock)
        await verifier.start()
        try:
            assert await verifier.verify(token_for("k2", rsa_key("b"))) == EXPECTED
            jwks_server.publish(("k1", rsa_key("a")))
            clock.advance(300)  # within the TTL the cached key still verifies
            assert await verifier.verify(token_for("k2", rsa_key("b"))) == EXPECTED
            assert jwks_server.requests == 1
            clock.advance(301)
            await expect_refusal(verifier, token_for("k2", rsa_key("b")), "unknown_kid")
            assert jwks_server.requests == 2
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
        finally:
            await verifier.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("failure", ["status", "oversized", "private", "not_jwks", "closed"])
def test_jwks_url_unavailable_at_start_does_not_fail_start(jwks_server: JwksServer,
                                                           failure: str) -> None:
    clock = FakeClock()
    url = jwks_server.url
    private_jwk = jwk.construct(private_pem(rsa_key("a")), "RS256").to_dict()
    if failure == "status":
        jwks_server.status = 500
    elif failure == "oversized":
        key = public_jwk(rsa_key("a"), "k1")
        jwks_server.document = {"keys": [key], "padding": "x" * 300_000}
    elif failure == "private":
        jwks_server.document = {"keys": [private_jwk]}
    elif failure == "not_jwks":
        jwks_server.document = ["k1"]
    else:
        url = f"http://127.0.0.1:{free_port()}/jwks.json"

    async def scenario() -> None:
        verifier = JwtVerifier(url_settings(url), clock=clock)
        await verifier.start()  # logs, does not raise
        try:
            await expect_refusal(verifier, token_for("k1", rsa_key("a")), "unknown_kid")
            if failure != "closed":
                jwks_server.publish(("k1", rsa_key("a")))
                jwks_server.status = 200
                clock.advance(61)  # keys are fetched on demand once the interval passed
                assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
        finally:
            await verifier.aclose()

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert logs[0]["event"] == "jwks_refresh_failed"
    assert logs[0]["log_level"] == "warning"
    assert private_jwk["d"] not in repr(logs)


def test_a_given_http_client_is_left_open(jwks_server: JwksServer) -> None:
    jwks_server.publish(("k1", rsa_key("a")))

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            verifier = JwtVerifier(url_settings(jwks_server.url), http=client)
            await verifier.start()
            assert await verifier.verify(token_for("k1", rsa_key("a"))) == EXPECTED
            await verifier.aclose()
            assert not client.is_closed

    asyncio.run(scenario())


def test_a_remembered_token_never_outlives_its_exp() -> None:
    """Verified tokens are remembered to spare the signature check, but never past `exp`."""
    # python-jose compares `exp` with whole seconds; two seconds after a one-second `exp`,
    # the token is expired to it whatever the fraction of the second we started in.
    token = sign(claims(exp=int(time.time()) + 1), HS_SECRET, "HS256")

    async def scenario() -> None:
        verifier = JwtVerifier(hs_settings(leeway_s=0))
        await verifier.start()
        try:
            first = await verifier.verify(token)
            assert await verifier.verify(token) == first
            await asyncio.sleep(2.2)
            with pytest.raises(AuthFailure) as info:
                await verifier.verify(token)
            assert info.value.reason == "expired"
        finally:
            await verifier.aclose()

    asyncio.run(scenario())


def test_only_the_exact_token_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token differing from a remembered one in any byte is verified afresh, and the
    memory holds a bounded number of tokens."""
    monkeypatch.setattr("service.security.jwt.VERIFIED_CACHE_MAX", 3)
    tokens = [sign(claims(sub=f"user-{i}"), HS_SECRET, "HS256") for i in range(5)]

    async def scenario() -> None:
        verifier = JwtVerifier(hs_settings())
        await verifier.start()
        try:
            for token in tokens:
                await verifier.verify(token)
            assert len(verifier._verified) == 3
            head, payload, signature = tokens[-1].split(".")
            swapped = "B" if signature[5] == "A" else "A"
            tampered = f"{head}.{payload}.{signature[:5]}{swapped}{signature[6:]}"
            with pytest.raises(AuthFailure):
                await verifier.verify(tampered)
        finally:
            await verifier.aclose()

    asyncio.run(scenario())
