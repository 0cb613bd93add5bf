"""Bearer JWT verification: python-jose plus the checks python-jose 3.5.0 leaves out.

python-jose verifies signatures and the registered claims, but it ignores `kid`, `typ`
and `crit`, accepts a token without `aud` when an audience is given, takes `exp` as a
numeric string, and lets TypeError/OverflowError escape on odd claim values (see
docs/security.md and the security checklist). So, before decoding: a size and shape check,
an `alg` allowlist, `crit`/`typ` checks and our own key selection; after it: strict
time-claim types and ranges, a maximum token age and the identity claims the kit relies
on. Every check after the signature runs inside the same `try` as the decode, so a signed
but hostile payload (`exp: 10**400`) can only ever end in `AuthFailure`.

`AuthFailure.reason` is for logs and metrics only; nothing here logs a token or a key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import structlog
from jose import jwt
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError, JWTError

from service.security.jwks import (
    JoseKey,
    JwksCache,
    KeyMaterialError,
    KeySet,
    VerificationKey,
    load_pem_key,
    parse_jwks,
)
from service.security.principal import AuthFailure, Principal
from service.settings import ENV_PREFIX, ConfigError, JwtSettings
from service.settings.security import check_limit_string, hmac_key_bytes, secret_weakness

log = structlog.get_logger("graphgate.auth")

# Three non-empty base64url segments; the signature may be empty only so that `alg:none`
# is reported as bad_alg. A JWE has five segments and never gets here (no jwe.decrypt).
_JWS_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_IDENTIFIER_CHARS = 128
# python-jose raises bare TypeError (`exp: []`), OverflowError (`exp: 1e400`),
# RecursionError (deeply nested payload) and JWKError besides JWTError.
_DECODE_ERRORS = (JOSEError, TypeError, ValueError, KeyError, AttributeError, ArithmeticError,
                  RecursionError)
# The largest NumericDate accepted either side of the epoch: 9999-12-31T23:59:59Z, the last
# second `datetime` can hold. Beyond it a claim is nonsense, and arithmetic with it overflows
# floats (`time.time() - 10**400` raises OverflowError).
MAX_NUMERIC_DATE = 253_402_300_799


# Verified tokens are remembered (by SHA-256, never the token itself) for at most this
# long and never past their `exp`, so a client sending the same token on every request
# pays for the signature check once a minute instead of every time (about 1 ms each).
# A key removed from the JWKS stops being honoured for cached tokens within this time.
VERIFIED_CACHE_TTL_S = 60.0
VERIFIED_CACHE_MAX = 10_000


class JwtVerifier:
    """Turns a bearer token into a `Principal`, or raises `AuthFailure(reason)`."""

    def __init__(self, settings: JwtSettings, *, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._http = http
        self._owns_http = False
        self._clock = clock
        self._static_key: VerificationKey | None = None  # secret or PEM: the only key
        self._jwks: KeySet | JwksCache | None = None
        self._started = False
        self._token_types = frozenset(_media_type(typ) for typ in settings.token_types)
        # sha256(token) -> (principal, the clock time until which the verification holds)
        self._verified: dict[bytes, tuple[Principal, float]] = {}
        self._options: dict[str, bool | int] = {
            "require_exp": True,
            "require_sub": True,
            "require_aud": settings.audience is not None,
            "require_iss": settings.issuer is not None,
            "require_iat": settings.max_token_age_s is not None,
            "leeway": settings.leeway_s,
        }

    async def start(self) -> None:
        """Load the key material; ConfigError (one line, no secret) if it is unusable."""
        s = self.settings
        try:
            if s.secret is not None:
                secret = s.secret.get_secret_value().encode()
                self._static_key = VerificationKey.build(None, secret, s.algorithms)
            elif s.secret_file is not None:
                secret = _read_secret(s.secret_file, s.algorithms)
                self._static_key = VerificationKey.build(None, secret, s.algorithms)
            elif s.public_key_file is not None:
                self._static_key = load_pem_key(_read(s.public_key_file), s.algorithms)
            elif s.jwks_file is not None:
                self._jwks = _load_jwks_file(s.jwks_file, s.algorithms)
            elif s.jwks_url is not None:
                self._jwks = await self._start_jwks_cache(s.jwks_url)
        except KeyMaterialError as exc:
            source = s.key_sources[0]
            path = getattr(s, source)
            where = f"{path} " if isinstance(path, Path) else ""
            env_name = f"{ENV_PREFIX}AUTH__JWT__{source.upper()}"
            message = f"invalid setting auth.jwt.{source} ({env_name}): {where}{exc}"
            raise ConfigError(message) from None
        self._started = True

    async def _start_jwks_cache(self, url: str) -> JwksCache:
        if self._http is None:
            self._http = httpx.AsyncClient()
            self._owns_http = True
        s = self.settings
        cache = JwksCache(
            url, s.algorithms, http=self._http, ttl_s=s.jwks_cache_ttl_s,
            min_refetch_interval_s=s.jwks_min_refetch_interval_s, clock=self._clock,
        )
        # An identity provider that is down now must not stop the service from starting:
        # the failure is logged and the cache fetches again on demand.
        await cache.refresh()
        return cache

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    async def verify(self, token: str) -> Principal:
        if not self._started:
            raise RuntimeError("JwtVerifier.verify() called before start()")
        digest = hashlib.sha256(token.encode("ascii", "replace")).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            principal, until = cached
            if self._clock() < until:
                return principal
            del self._verified[digest]
        principal, claims = await self._verify(token)
        self._remember(digest, principal, claims)
        return principal

    def _remember(self, digest: bytes, principal: Principal, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        until = min(float(claims["exp"]), now + VERIFIED_CACHE_TTL_S)
        max_age = self.settings.max_token_age_s
        if max_age is not None and isinstance(claims.get("iat"), int | float):
            until = min(until, float(claims["iat"]) + max_age)
        if until <= now:
            return
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[digest] = (principal, until)

    async def _verify(self, token: str) -> tuple[Principal, Mapping[str, Any]]:
        header = self._checked_header(token)
        alg: str = header["alg"]
        key = await self._key_for(header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.settings.audience,
                issuer=self.settings.issuer, options=dict(self._options),
            )
            # Inside the try: the payload is signed but may still be hostile, and no check
            # on it may end in anything but AuthFailure (anything else would be a 500).
            self._check_times(claims)
            return self._principal(claims), claims
        except AuthFailure:
            raise
        except _DECODE_ERRORS as exc:
            raise AuthFailure(_reason(exc)) from None

    def _checked_header(self, token: str) -> Mapping[str, Any]:
        if len(token) > self.settings.max_token_bytes:
            raise AuthFailure("too_large")
        if not _JWS_SHAPE.fullmatch(token):  # ASCII only, so characters are bytes
            raise AuthFailure("malformed")
        try:
            header: Mapping[str, Any] = jwt.get_unverified_header(token)
        except JOSEError:
            raise AuthFailure("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise AuthFailure("bad_alg")  # none/None/NONE, other families, anything unlisted
        if "crit" in header:
            # RFC 7515 §4.1.11: we understand no extension, so we must refuse any `crit`.
            raise AuthFailure("unsupported_crit")
        if self._token_types:
            typ = header.get("typ")
            if not isinstance(typ, str) or _media_type(typ) not in self._token_types:
                raise AuthFailure("bad_typ")
        # `jku`, `x5u`, `x5c` and `jwk` are never read: keys come from config only.
        return header

    async def _key_for(self, kid: object, alg: str) -> JoseKey:
        if self._static_key is not None:
            key: VerificationKey | None = self._static_key  # one key: `kid` is irrelevant
        elif self._jwks is None:
            raise AuthFailure("jwt_disabled")
        elif kid is not None and not isinstance(kid, str):
            raise AuthFailure("unknown_kid")
        elif isinstance(self._jwks, JwksCache):
            key = await self._jwks.find(kid, alg)
        else:
            key = self._jwks.find(kid, alg)
        if key is None:
            raise AuthFailure("unknown_kid")
        jose_key = key.by_alg.get(alg)
        if jose_key is None:
            raise AuthFailure("bad_alg")  # e.g. ES256 named for an RSA key
        return jose_key

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        for name in ("exp", "nbf", "iat"):
            # python-jose takes "exp": "9999999999" (int() of a string); RFC 7519 says number.
            # It also takes `exp: 10**30` (valid for ever) and `nbf: -10**400`.
            if name in claims and not _is_numeric_date(claims[name]):
                raise AuthFailure("invalid")
        iat = claims.get("iat")
        if iat is None:
            return
        now, leeway = self._clock(), self.settings.leeway_s
        if iat > now + leeway:
            raise AuthFailure("not_yet_valid")  # issued in the future
        max_age = self.settings.max_token_age_s
        if max_age is not None and now - iat > max_age + leeway:
            raise AuthFailure("too_old")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        s = self.settings
        subject = _identifier(claims["sub"], "bad_subject")
        if s.tenant_claim in claims:
            tenant = _identifier(claims[s.tenant_claim], "bad_tenant")
            if "/" in tenant or ":" in tenant:
                # Principal.owner() is "tenant/subject" and identity "jwt:tenant:subject";
                # a separator in the tenant could make two principals share threads.
                raise AuthFailure("bad_tenant")
        elif s.default_tenant is not None:
            tenant = s.default_tenant
        else:
            raise AuthFailure("missing_tenant")
        return Principal(
            tenant=tenant, subject=subject, method="jwt", key_id=None,
            scopes=_scopes(claims.get(s.scopes_claim)),
            rate_limit=self._rate_limit(claims, tenant, subject),
        )

    def _rate_limit(self, claims: Mapping[str, Any], tenant: str, subject: str) -> str | None:
        value = claims.get(self.settings.rate_limit_claim)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                check_limit_string(value)
                return value
            except ValueError:
                pass
        # The default limit still applies; the identity provider's admin should hear of it.
        log.warning("jwt_rate_limit_ignored", claim=self.settings.rate_limit_claim,
                    tenant=tenant, subject=subject)
        return None


def _reason(exc: Exception) -> str:
    """A short reason for logs and metrics, from python-jose 3.5.0's exception and message."""
    message = str(exc)
    if isinstance(exc, ExpiredSignatureError):
        return "expired"
    if isinstance(exc, JWTClaimsError):
        if "(nbf)" in message:
            return "not_yet_valid"
        if "audience" in message:
            return "bad_audience"
        if "issuer" in message:
            return "bad_issuer"
        return "invalid"
    if isinstance(exc, JWTError):
        if message.startswith("missing required key"):
            return "missing_claim"
        if "Signature verification failed" in message:
            return "bad_signature"
    return "invalid"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None


def _read_secret(path: Path, algorithms: Sequence[str]) -> bytes:
    try:
        # Stripped like the secrets directory's files: editors and `echo` add a newline.
        secret = _read(path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeyMaterialError("is not UTF-8 text") from None
    weakness = secret_weakness(secret)
    if weakness:
        raise KeyMaterialError(f"holds a secret that {weakness}")
    # RFC 7518 3.2: an HMAC key at least as long as the hash (48 bytes for HS384, 64 for
    # HS512), the rule settings apply to an inline `secret`.
    needed = hmac_key_bytes(list(algorithms))
    if len(secret.encode()) < needed:
        raise KeyMaterialError(
            f"holds a secret shorter than {needed} bytes, the minimum for "
            f"{', '.join(algorithms)}"
        )
    return secret.encode()


def _load_jwks_file(path: Path, algorithms: Sequence[str]) -> KeySet:
    data = _read(path)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise KeyMaterialError("is not JSON") from None
    keys, skipped = parse_jwks(document, algorithms)
    if not keys.keys:
        raise KeyMaterialError("has no usable key: " + ("; ".join(skipped) or "it is empty"))
    if skipped:
        log.warning("jwks_keys_skipped", path=str(path), skipped=skipped)
    return keys


def _media_type(typ: str) -> str:
    # RFC 7515 §4.1.9: "at+jwt" means "application/at+jwt"; media types ignore case.
    typ = typ.strip().lower()
    return typ if "/" in typ else f"application/{typ}"


def _is_numeric_date(value: object) -> bool:
    """An int or finite float (never a bool) within ±MAX_NUMERIC_DATE; never raises."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    # Exact for ints of any size: `-MAX <= 10**400` compares without converting to float.
    return -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE


def _identifier(value: object, reason: str) -> str:
    """A non-empty, printable string of at most 128 characters (it reaches logs and keys)."""
    if (not isinstance(value, str) or not value.strip() or len(value) > MAX_IDENTIFIER_CHARS
            or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value)):
        raise AuthFailure(reason)
    return value


def _scopes(value: object) -> frozenset[str]:
    """A space-separated string or a list of strings (RFC 8693 / RFC 9068); else none."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        # An item with whitespace in it is no scope token (RFC 6749 §3.3).
        return frozenset(item for item in value if item and item.split() == [item])
    return frozenset()
