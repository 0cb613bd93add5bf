"""Attacks on authentication, through a real server in production mode.

Every refusal must be the same 401 problem body (only the request id differs), with a
`WWW-Authenticate` challenge, and no credential may reach the server's output.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest
from jose import jwk, jwt

from service.security.api_keys import generate_key
from tests.security.conftest import AUDIENCE, ISSUER, KeyRing, RsaIssuer, SecureServe
from tests.support.servers import ThreadServer

UNAUTHORIZED_BODY = {
    "type": "urn:graphgate:problem:unauthorized",
    "title": "Unauthorized",
    "status": 401,
    "code": "unauthorized",
    "detail": "Missing or invalid credentials: send an API key in X-API-Key or a bearer token.",
}


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _assert_refused(response: httpx.Response, *, invalid: bool = True) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    assert body == UNAUTHORIZED_BODY
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="graphgate"')
    assert ('error="invalid_token"' in challenge) is invalid


def _get(server: ThreadServer, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(server.url + "/v1/threads", headers=headers, timeout=10)


@pytest.fixture
def server(secure_server: SecureServe) -> ThreadServer:
    return secure_server()


def test_no_credentials(server: ThreadServer) -> None:
    _assert_refused(_get(server, {}), invalid=False)
    _assert_refused(httpx.post(server.url + "/v1/chat", json={"message": "hi"}), invalid=False)
    # Unknown paths too: no route enumeration without credentials.
    _assert_refused(httpx.get(server.url + "/v1/nope"), invalid=False)


def test_probes_need_no_credentials(server: ThreadServer) -> None:
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    # Bad credentials on a probe are ignored, never a reason to fail it.
    assert httpx.get(server.url + "/healthz", headers={"X-API-Key": "nonsense"}).status_code == 200


def test_valid_api_key_and_bearer_form(server: ThreadServer, keyring: KeyRing) -> None:
    alice = keyring["alice"]
    assert _get(server, alice.headers).status_code == 200
    # Prometheus and most HTTP clients can only send Authorization: Bearer.
    assert _get(server, {"Authorization": f"Bearer {alice.key}"}).status_code == 200


def test_api_key_attacks_share_one_body(server: ThreadServer, keyring: KeyRing,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    alice = keyring["alice"]
    unknown_id = generate_key()[1]  # well formed, checksum fine, id not in the file
    _, other_secret = generate_key(alice.key_id)  # alice's id, another secret
    malformed = alice.key[:-1] + ("A" if alice.key[-1] != "A" else "B")  # checksum broken
    attempts = {
        "unknown id": unknown_id,
        "wrong secret": other_secret,
        "bad checksum": malformed,
        "expired": keyring["expired"].key,
        "garbage": "x" * 40,
        "empty": "",
        "oversized": "ggk_" + "a" * 10_000,
    }
    for label, key in attempts.items():
        response = _get(server, {"X-API-Key": key})
        assert response.status_code == 401, label
        _assert_refused(response)
    output = capfd.readouterr()
    for key in attempts.values():
        if key:
            assert key not in output.out + output.err
    assert alice.key not in output.out + output.err


def test_two_credentials_are_refused(server: ThreadServer, keyring: KeyRing,
                                     rsa_issuer: RsaIssuer) -> None:
    headers = {**keyring["alice"].headers, "Authorization": f"Bearer {rsa_issuer.token()}"}
    _assert_refused(_get(server, headers))


def test_repeated_credential_headers_are_refused(server: ThreadServer, keyring: KeyRing,
                                                 rsa_issuer: RsaIssuer) -> None:
    alice, carol = keyring["alice"].key, keyring["carol"].key
    for name, values in (("X-API-Key", [alice, carol]), ("X-API-Key", [alice, alice]),
                         ("Authorization", [f"Bearer {rsa_issuer.token()}",
                                            f"Bearer {rsa_issuer.token(sub='other')}"])):
        response = httpx.get(server.url + "/v1/threads",
                             headers=[(name, value) for value in values])
        _assert_refused(response)


def test_credentials_in_the_query_string_are_ignored(server: ThreadServer, keyring: KeyRing,
                                                     rsa_issuer: RsaIssuer) -> None:
    for name, value in (("api_key", keyring["alice"].key), ("token", rsa_issuer.token()),
                        ("access_token", rsa_issuer.token())):
        _assert_refused(httpx.get(server.url + "/v1/threads", params={name: value}),
                        invalid=False)


def test_other_schemes_are_refused(server: ThreadServer, keyring: KeyRing) -> None:
    basic = base64.b64encode(f"alice:{keyring['alice'].key}".encode()).decode()
    _assert_refused(_get(server, {"Authorization": f"Basic {basic}"}))


def test_missing_scope_is_403(server: ThreadServer, keyring: KeyRing) -> None:
    reader = keyring["reader"]
    assert _get(server, reader.headers).status_code == 200
    refused = httpx.post(server.url + "/v1/chat", json={"message": "hi"}, headers=reader.headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="runs:create"' in refused.headers["www-authenticate"]


def test_valid_jwt_is_accepted_with_its_scopes(server: ThreadServer,
                                               rsa_issuer: RsaIssuer) -> None:
    token = rsa_issuer.token(scope="threads:read threads:write")
    assert _get(server, {"Authorization": f"Bearer {token}"}).status_code == 200
    refused = httpx.post(server.url + "/v1/chat", json={"message": "hi"},
                         headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 403
    listed = rsa_issuer.token(scope=["runs:create"])
    chat = httpx.post(server.url + "/v1/chat", json={"message": "hi"},
                      headers={"Authorization": f"Bearer {listed}"}, timeout=30)
    assert chat.status_code == 200


def _forged_tokens(issuer: RsaIssuer) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "mallory", "tenant": "tenant-a", "scope": "*", "iss": ISSUER,
              "aud": AUDIENCE, "iat": now, "exp": now + 300}
    good = issuer.token(sub="mallory", tenant="tenant-a")
    header, payload, signature = good.split(".")
    tampered_payload = _b64({**claims, "sub": "alice"})
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    public_pem = issuer.public_pem.decode()
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg None": f"{_b64({'alg': 'None'})}.{_b64(claims)}.",
        "HS256 with the RSA public key": _hs256_with_key(claims, public_pem),
        "expired": issuer.token(lifetime_s=-600),
        "not yet valid": issuer.token(nbf=now + 600),
        "issued in the future": issuer.token(iat=now + 600),
        "too old": issuer.token(iat=now - 10 * 86_400, lifetime_s=300),
        "wrong issuer": issuer.token(iss="https://evil.test"),
        "wrong audience": issuer.token(aud="another-api"),
        "no audience": issuer.token(aud=None),
        "no expiry": issuer.token(exp=None),
        "no subject": issuer.token(sub=None),
        "no tenant": issuer.token(tenant=None),
        "exp list": issuer.token(exp=[]),
        "exp null object": issuer.token(exp={}),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{flipped}",
        "crit header": issuer.token(headers={"crit": ["exp"]}),
        "oversized": issuer.token(padding="x" * 9000),
        "JWE shaped": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aaaa.bbbb.cccc",
        "not a JWT": "definitely-not-a-token",
    }


def _hs256_with_key(claims: dict[str, Any], secret: str) -> str:
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def test_jwt_attacks_are_refused(server: ThreadServer, rsa_issuer: RsaIssuer,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    forged = _forged_tokens(rsa_issuer)
    for label, token in forged.items():
        response = _get(server, {"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, f"{label}: {response.text}"
        _assert_refused(response)
    output = capfd.readouterr()
    for token in forged.values():
        if len(token) > 20:
            signature = token.rsplit(".", 1)[-1]
            assert token not in output.out + output.err
            if len(signature) > 20:
                assert signature not in output.out + output.err


def test_jwks_kid_selection(secure_server: SecureServe, rsa_issuer: RsaIssuer,
                            tmp_path: Any) -> None:
    """With a JWKS, the key is chosen by exact kid: an unknown kid, or a token signed by
    another key but labelled with a known kid, is refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public = jwk.construct(rsa_issuer.public_pem.decode(), "RS256").to_dict()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    server = secure_server(auth={"jwt": {"algorithms": ["RS256"], "jwks_file": jwks,
                                         "public_key_file": None, "issuer": ISSUER,
                                         "audience": AUDIENCE}})
    good = rsa_issuer.token(headers={"kid": "k1"})
    assert _get(server, {"Authorization": f"Bearer {good}"}).status_code == 200
    now = int(time.time())
    claims = {"sub": "x", "tenant": "t", "iss": ISSUER, "aud": AUDIENCE, "iat": now,
              "exp": now + 300}
    unknown = rsa_issuer.token(headers={"kid": "k2"})
    impostor = jwt.encode(claims, other_pem, algorithm="RS256", headers={"kid": "k1"})
    # jku/x5u/jwk headers name the attacker's own key; keys come from config only.
    embedded = jwk.construct(other_pem, "RS256").public_key().to_dict()
    pointed = jwt.encode(claims, other_pem, algorithm="RS256",
                         headers={"kid": "k1", "jku": "http://127.0.0.1:9/jwks.json",
                                  "jwk": embedded})
    for token in (unknown, impostor, pointed):
        _assert_refused(_get(server, {"Authorization": f"Bearer {token}"}))
