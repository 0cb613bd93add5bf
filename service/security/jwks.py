"""Verification keys for JWTs: an HMAC secret, a PEM public key, or a JWKS (file or URL).

Every key is turned into python-jose key objects up front, one per algorithm it may
verify, so a token's `alg` can only ever select a key of the matching type: an RSA key
never meets an HMAC algorithm (algorithm confusion) and a P-384 key never verifies ES256.
A JWKS is searched by exact `kid` here, because python-jose on its own ignores `kid` and
tries every key in the set.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jose import jwk
from jose.exceptions import JOSEError

log = structlog.get_logger("graphgate.auth")

MIN_RSA_BITS = 2048
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
# RFC 7518 §3.4 ties each ES* algorithm to one curve.
EC_ALGORITHM_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
JWK_CURVES: Mapping[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1(),
}
# Members that only a private JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4).
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
MAX_JWKS_BYTES = 256 * 1024  # real sets are a few KiB; this bounds a hostile endpoint
FETCH_TIMEOUT_S = 10.0  # for the whole download, so a trickling server cannot hold the lock
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

JoseKey = Any  # python-jose ships no type hints
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyMaterialError(Exception):
    """Key material is unusable. The message never contains key bytes or a secret."""


@dataclass(frozen=True)
class VerificationKey:
    """One key, ready to verify: a python-jose key object for each algorithm it fits."""

    kid: str | None
    by_alg: Mapping[str, JoseKey]

    @classmethod
    def build(cls, kid: str | None, material: PublicKey | bytes,
              algorithms: Sequence[str]) -> VerificationKey:
        try:
            return cls(kid, {alg: jwk.construct(material, alg) for alg in algorithms})
        except JOSEError:
            # python-jose refuses PEM- or SSH-looking bytes as an HMAC secret.
            raise KeyMaterialError("is not usable as a key for " + ", ".join(algorithms)) from None


@dataclass(frozen=True)
class KeySet:
    """The usable keys of a JWKS, each `kid` at most once."""

    keys: tuple[VerificationKey, ...] = ()

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key named `kid` that fits `alg`, else one named `kid` (the caller refuses it)."""
        if kid is None:
            # A token without `kid` is only unambiguous against a one-key set.
            return self.keys[0] if len(self.keys) == 1 else None
        named = [key for key in self.keys if key.kid == kid]
        # RFC 7517 §4.5 lets keys of different types share a kid; `alg` tells them apart.
        return next((key for key in named if alg in key.by_alg), named[0] if named else None)


def fitting_algorithms(public_key: PublicKey, allowed: Sequence[str]) -> tuple[str, ...]:
    """The allowed algorithms this public key may verify; KeyMaterialError if it is unfit."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(
                f"is a {public_key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits needed"
            )
        fitting: tuple[str, ...] = RSA_ALGORITHMS
    else:
        alg = EC_ALGORITHM_BY_CURVE.get(public_key.curve.name)
        if alg is None:
            raise KeyMaterialError(f"uses the unsupported curve {public_key.curve.name}")
        fitting = (alg,)
    return tuple(alg for alg in allowed if alg in fitting)


def load_pem_key(data: bytes, algorithms: Sequence[str]) -> VerificationKey:
    """A PEM public key or certificate as one key (its `kid` does not matter)."""
    if b"PRIVATE KEY" in data:
        # Only the identity provider should hold it; refusing tells the operator early.
        raise KeyMaterialError("holds a private key; give the public key only")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            public_key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyMaterialError("is not a PEM public key or certificate") from None
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyMaterialError("holds neither an RSA nor an EC key")
    usable = fitting_algorithms(public_key, algorithms)
    if not usable:
        raise KeyMaterialError(f"holds a key that fits none of the algorithms {list(algorithms)}")
    return VerificationKey.build(None, public_key, usable)


def parse_jwks(document: object, algorithms: Sequence[str]) -> tuple[KeySet, list[str]]:
    """The usable keys of a JWKS document, and why the others were skipped.

    A private key anywhere in the set refuses the whole document: whoever publishes one
    has leaked it, and anyone could sign with it.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyMaterialError('is not a JWKS (a JSON object with a "keys" list)')
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for index, entry in enumerate(document["keys"]):
        if isinstance(entry, dict) and any(name in entry for name in PRIVATE_JWK_MEMBERS):
            raise KeyMaterialError(f"holds private key material (key {index})")
        try:
            key = _parse_jwk(entry, algorithms)
        except KeyMaterialError as exc:
            skipped.append(f"key {index} {exc}")
            continue
        if key.kid is not None and any(seen.kid == key.kid and seen.by_alg.keys() & key.by_alg
                                       for seen in keys):
            skipped.append(f"key {index} repeats an earlier kid for the same algorithm")
            continue
        keys.append(key)
    return KeySet(tuple(keys)), skipped


def _parse_jwk(entry: object, algorithms: Sequence[str]) -> VerificationKey:
    if not isinstance(entry, dict):
        raise KeyMaterialError("is not a JSON object")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyMaterialError("has a kid that is not a string")
    if entry.get("use", "sig") != "sig":
        raise KeyMaterialError("is not a signing key (use)")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise KeyMaterialError("is not a verification key (key_ops)")
    public_key: PublicKey
    try:
        if entry.get("kty") == "RSA":
            exponent, modulus = _b64_int(entry, "e"), _b64_int(entry, "n")
            public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        elif entry.get("kty") == "EC":
            curve = JWK_CURVES.get(entry.get("crv", ""))
            if curve is None:
                raise KeyMaterialError("has an unsupported crv")
            size = (curve.key_size + 7) // 8
            x, y = _b64_bytes(entry, "x"), _b64_bytes(entry, "y")
            if len(x) != size or len(y) != size:
                raise KeyMaterialError("has coordinates of the wrong length")
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        else:
            raise KeyMaterialError("has a kty other than RSA or EC")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyMaterialError("has invalid key parameters") from None
    usable = fitting_algorithms(public_key, algorithms)
    if "alg" in entry:
        usable = tuple(alg for alg in usable if alg == entry["alg"])
    if not usable:
        raise KeyMaterialError(f"fits none of the algorithms {list(algorithms)}")
    return VerificationKey.build(kid, public_key, usable)


def _b64_bytes(entry: Mapping[str, object], name: str) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise KeyMaterialError(f"has a missing or invalid {name}")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise KeyMaterialError(f"has an invalid {name}") from None


def _b64_int(entry: Mapping[str, object], name: str) -> int:
    return int.from_bytes(_b64_bytes(entry, name), "big")


class JwksCache:
    """Keys from a JWKS URL, refetched after `ttl_s` and on unknown kids, rate-limited.

    Every fetch attempt, whatever triggered it, is at least `min_refetch_interval_s` after
    the previous one, so a flood of random kids or a dead endpoint costs the identity
    provider one request per interval. A failed fetch keeps the keys we have.
    """

    def __init__(self, url: str, algorithms: Sequence[str], *, http: httpx.AsyncClient,
                 ttl_s: float, min_refetch_interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._url = url
        self._algorithms = tuple(algorithms)
        self._http = http
        self._ttl_s = ttl_s
        self._min_interval_s = min_refetch_interval_s
        self._clock = clock
        self._keys = KeySet()
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()  # one fetch at a time; waiters then see its result
        parts = urlsplit(url)
        self._log_url = f"{parts.scheme}://{parts.netloc}{parts.path}"  # no query string

    async def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        key = self._keys.find(kid, alg)
        # A fetch already running must not stall requests whose key we know.
        if key is not None and (not self._stale() or self._lock.locked()):
            return key
        async with self._lock:
            key = self._keys.find(kid, alg)
            if (key is None or self._stale()) and self._may_fetch():
                await self.refresh()
                key = self._keys.find(kid, alg)
        return key

    async def refresh(self) -> bool:
        """Fetch the set once now; on failure log `jwks_refresh_failed` and keep the old keys."""
        self._attempted_at = self._clock()
        try:
            keys, skipped = parse_jwks(await self._download(), self._algorithms)
            if not keys.keys:
                raise KeyMaterialError("has no usable key")
        except (httpx.HTTPError, httpx.InvalidURL, OSError, TimeoutError,
                KeyMaterialError) as exc:
            log.warning("jwks_refresh_failed", url=self._log_url,
                        error=f"{type(exc).__name__}: {exc}", cached_keys=len(self._keys.keys))
            return False
        self._keys, self._fetched_at = keys, self._clock()
        log.info("jwks_refreshed", url=self._log_url, keys=len(keys.keys), skipped=skipped)
        return True

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl_s

    def _may_fetch(self) -> bool:
        return (self._attempted_at is None
                or self._clock() - self._attempted_at >= self._min_interval_s)

    async def _download(self) -> object:
        body = bytearray()
        async with asyncio.timeout(FETCH_TIMEOUT_S), self._http.stream(
            "GET", self._url, headers={"Accept": "application/json"},
            follow_redirects=False,  # a redirect could leave https or the configured host
        ) as response:
            if response.status_code != 200:
                raise KeyMaterialError(f"answered HTTP {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise KeyMaterialError(f"is larger than {MAX_JWKS_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise KeyMaterialError("is not JSON") from None
