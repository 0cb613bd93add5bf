"""The full production stack for attack tests: real keys files, real JWTs, real servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from service.security.api_keys import generate_key, hash_key
from service.settings import Settings
from tests.conftest import TEST_GRAPHS
from tests.support.servers import ThreadServer

ISSUER = "https://idp.test"
AUDIENCE = "graphgate-tests"


@dataclass(frozen=True)
class Caller:
    """One API key: its id, the key itself, and the headers that present it."""

    key_id: str
    key: str
    tenant: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@dataclass
class KeyRing:
    path: Path
    callers: dict[str, Caller]

    def __getitem__(self, name: str) -> Caller:
        return self.callers[name]


# name: (tenant, scopes, rate_limit, expires_at)
KEY_SPECS: dict[str, tuple[str, list[str], str | None, str | None]] = {
    "alice": ("tenant-a", ["*"], None, None),
    "bob": ("tenant-a", ["*"], None, None),
    "carol": ("tenant-b", ["*"], None, None),
    "reader": ("tenant-a", ["threads:read"], None, None),
    "limited": ("tenant-c", ["*"], "3/minute", None),
    "expired": ("tenant-a", ["*"], None, "2020-01-01T00:00:00Z"),
}


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_keys_file(path: Path, callers: dict[str, Caller],
                    specs: dict[str, tuple[str, list[str], str | None, str | None]]) -> None:
    blocks = []
    for name, caller in callers.items():
        tenant, scopes, rate_limit, expires_at = specs[name]
        lines = ["[[keys]]", f"id = {_toml(caller.key_id)}",
                 f"hash = {_toml(hash_key(caller.key))}", f"tenant = {_toml(tenant)}",
                 f"name = {_toml(name)}", f"scopes = {_toml(scopes)}"]
        if rate_limit:
            lines.append(f"rate_limit = {_toml(rate_limit)}")
        if expires_at:
            lines.append(f"expires_at = {_toml(expires_at)}")
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n")


@pytest.fixture
def keyring(tmp_path: Path) -> KeyRing:
    callers = {}
    for name, (tenant, _scopes, _limit, _expiry) in KEY_SPECS.items():
        key_id, key = generate_key()
        callers[name] = Caller(key_id, key, tenant)
    path = tmp_path / "keys.toml"
    write_keys_file(path, callers, KEY_SPECS)
    return KeyRing(path, callers)


@dataclass(frozen=True)
class RsaIssuer:
    """An identity provider's RS256 signing key, and a way to mint tokens with it."""

    private_pem: bytes
    public_pem: bytes
    public_key_file: Path

    def token(self, *, sub: str = "user-1", tenant: str | None = "tenant-j",
              scope: str | list[str] | None = "*", lifetime_s: int = 300,
              headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now,
                                   "exp": now + lifetime_s}
        if tenant is not None:
            payload["tenant"] = tenant
        if scope is not None:
            payload["scope"] = scope
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, self.private_pem.decode(), algorithm="RS256", headers=headers)


@pytest.fixture(scope="session")
def rsa_issuer(tmp_path_factory: pytest.TempPathFactory) -> RsaIssuer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path_factory.mktemp("jwt") / "issuer.pem"
    path.write_bytes(public_pem)
    return RsaIssuer(private_pem, public_pem, path)


def secure_settings(database_url: str, keyring: KeyRing | None = None,
                    issuer: RsaIssuer | None = None, **overrides: Any) -> Settings:
    """Production settings with every protection on (and fast demo replies)."""
    auth: dict[str, Any] = {}
    if keyring is not None:
        auth["api_keys_file"] = keyring.path
    if issuer is not None:
        auth["jwt"] = {"algorithms": ["RS256"], "public_key_file": issuer.public_key_file,
                       "issuer": ISSUER, "audience": AUDIENCE}
    values: dict[str, Any] = {
        "env": "production",
        "database_url": database_url,
        "graphs": TEST_GRAPHS,
        "default_graph": "demo",
        "demo": {"token_delay_ms": 0, "reply_tokens": 8},
        "auth": auth,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return Settings(**values)


SecureServe = Callable[..., ThreadServer]


@pytest.fixture
def secure_server(serve: Callable[[Settings], ThreadServer], keyring: KeyRing,
                  rsa_issuer: RsaIssuer, tmp_path: Path) -> SecureServe:
    """Start a production-mode server with API keys and RS256 JWTs on a SQLite store."""

    def _start(database_url: str | None = None, **overrides: Any) -> ThreadServer:
        url = database_url or f"sqlite:///{tmp_path}/secure.sqlite"
        return serve(secure_settings(url, keyring, rsa_issuer, **overrides))

    return _start
