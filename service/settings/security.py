"""The security sections: `[auth]`, `[auth.jwt]`, `[rate_limit]`, `[cors]`, `[http]`, `[metrics]`.

Each field says what it defends against; docs/security.md is the reviewer's guide, and
`graphgate check-config` reports the effective posture. Checks that involve more than one
section (for example "production needs auth") live on `Settings` itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from service.settings.types import CommaList, Section, split_commas

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
# `none` is not representable: an algorithm must be one of these names.
JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
                       "ES512"]
MIN_SECRET_BYTES = 32
MIN_SECRET_DISTINCT_CHARS = 12
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def secret_weakness(secret: str) -> str | None:
    """Why an HMAC secret is too weak to sign tokens with, or None."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    if len(set(secret)) < MIN_SECRET_DISTINCT_CHARS:
        # "aaaa…" or "1234512345…" pass a length check but are guessable.
        return "does not look random (too few distinct characters)"
    return None


def _none_if_zero(value: object) -> object:
    return None if value in (0, "0", "", "none", "None") else value


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["RS256"]


def hmac_key_bytes(algorithms: list[str] | list[JwtAlgorithm]) -> int:
    """The shortest HMAC key RFC 7518 allows for every listed algorithm."""
    return max([MIN_SECRET_BYTES] + [int(alg[2:]) // 8 for alg in algorithms
                                     if alg in HMAC_ALGORITHMS])


class JwtSettings(Section):
    """Bearer JWT verification (python-jose). JWT is on when one key source is set."""

    algorithms: Annotated[list[JwtAlgorithm], NoDecode, BeforeValidator(split_commas)] = Field(
        default_factory=_default_algorithms,
        description="Accepted `alg` values; the token header must name one. HMAC (HS*) and "
        "asymmetric (RS*/ES*) are never mixed, so a public key cannot be used as an HMAC "
        "secret (algorithm confusion).",
    )
    issuer: str | None = Field(None, description="Required `iss`. Required in production.")
    audience: str | None = Field(
        None, description="Required `aud` (this API's identifier). Required in production."
    )
    secret: SecretStr | None = Field(
        None, description=f"HMAC key; at least {MIN_SECRET_BYTES} random bytes."
    )
    secret_file: Path | None = Field(None, description="File holding the HMAC key.")
    public_key_file: Path | None = Field(None, description="PEM public key (RS*/ES*).")
    jwks_file: Path | None = Field(None, description="A JWKS document on disk.")
    jwks_url: str | None = Field(
        None, description="JWKS endpoint (https, or http on loopback only)."
    )
    jwks_cache_ttl_s: float = Field(
        600.0, gt=0, le=86_400, description="Refetch the JWKS after this long; a removed key "
        "stops working within it."
    )
    jwks_min_refetch_interval_s: float = Field(
        60.0, ge=1, description="An unknown `kid` triggers at most one refetch per interval, so "
        "random kids cannot flood the identity provider."
    )
    leeway_s: int = Field(30, ge=0, le=60, description="Clock skew allowed on exp/nbf/iat.")
    max_token_age_s: Annotated[int | None, BeforeValidator(_none_if_zero)] = Field(
        86_400, ge=60, description="Refuse tokens issued (`iat`) longer ago than this; `iat` "
        "becomes required. 0 accepts any age within `exp`."
    )
    max_token_bytes: int = Field(
        8192, ge=512, le=65_536, description="Longer tokens are refused without decoding."
    )
    token_types: CommaList = Field(
        default_factory=list,
        description="If set, the header `typ` must be one of these (e.g. [\"at+jwt\"], RFC "
        "9068), which keeps ID tokens out.",
    )
    tenant_claim: str = Field("tenant", description="Claim naming the caller's tenant.")
    default_tenant: str | None = Field(
        None, description="Tenant for tokens without the tenant claim; unset refuses them."
    )
    scopes_claim: str = Field(
        "scope", description="Claim with the granted scopes (space-separated or a list)."
    )
    rate_limit_claim: str = Field(
        "rate_limit", description="Optional claim overriding the default rate limit."
    )

    @field_validator("algorithms")
    @classmethod
    def _one_family(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one algorithm")
        families = {alg in HMAC_ALGORITHMS for alg in value}
        if len(families) > 1:
            raise ValueError("must not mix HMAC (HS*) and asymmetric (RS*/ES*) algorithms")
        return value

    @field_validator("secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            weakness = secret_weakness(value.get_secret_value())
            if weakness:
                raise ValueError(weakness)  # never the secret itself
        return value

    @field_validator("default_tenant")
    @classmethod
    def _plain_tenant(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(
                ch in value for ch in "/:") or not value.isprintable()):
            raise ValueError("must be non-empty printable text without '/' or ':'")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
            return value
        raise ValueError("must be an https:// URL (http:// only on loopback)")

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        sources = self.key_sources
        if len(sources) > 1:
            raise ValueError(f"set only one JWT key source, not {' and '.join(sources)}")
        if not sources:
            return self
        hmac = sources[0] in ("secret", "secret_file")
        if hmac != (self.algorithms[0] in HMAC_ALGORITHMS):
            kind = "HS*" if hmac else "RS*/ES*"
            raise ValueError(f"{sources[0]} needs {kind} algorithms, not {self.algorithms}")
        if self.secret is not None:
            needed = hmac_key_bytes(self.algorithms)
            if len(self.secret.get_secret_value().encode()) < needed:
                # RFC 7518 3.2: the key must be at least as long as the hash output.
                raise ValueError(f"secret must be at least {needed} bytes for {self.algorithms}")
        return self

    @property
    def key_sources(self) -> list[str]:
        names = ("secret", "secret_file", "public_key_file", "jwks_file", "jwks_url")
        return [name for name in names if getattr(self, name) is not None]

    @property
    def enabled(self) -> bool:
        return bool(self.key_sources)


class AuthSettings(Section):
    """Who may call the API. Production refuses to start with no method configured."""

    enabled: bool = Field(
        True, description="Off is allowed in development only; every caller is then one "
        "anonymous principal."
    )
    api_keys_file: Path | None = Field(
        None, description="TOML file of `[[keys]]` (hashes only); `graphgate keys create` "
        "makes entries. Re-read on SIGHUP."
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    share_threads_within_tenant: bool = Field(
        False, description="Threads belong to tenant+subject; true makes them visible to "
        "every principal of the same tenant."
    )

    @property
    def methods(self) -> list[str]:
        methods = ["api_key"] if self.api_keys_file is not None else []
        return methods + (["jwt"] if self.jwt.enabled else [])


class RateLimitSettings(Section):
    """Per-principal request limits (slowapi on limits)."""

    enabled: bool = Field(True, description="Apply the limits below.")
    storage_uri: SecretStr = Field(
        SecretStr("memory://"),
        description="`memory://` (per process) or `redis://…` (shared by workers and "
        "replicas). Secret because it may hold a password.",
    )
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = Field(
        "moving-window", description="limits' algorithm; moving-window has no boundary bursts."
    )
    default_limits: str = Field(
        "120/minute;2000/hour", description="Per principal, all routes together. A key's "
        "`rate_limit` or the JWT rate-limit claim replaces it."
    )
    anonymous_limits: str = Field(
        "30/minute", description="Per client IP, for calls without credentials (auth off, or "
        "public paths)."
    )
    run_limits: str = Field(
        "30/minute", description="Per principal, for routes that start a graph run."
    )
    max_concurrent_streams: int = Field(
        8, ge=0, description="Open SSE streams per principal (0 = no cap); shared across "
        "workers with redis storage."
    )
    on_storage_error: Literal["memory", "open", "closed"] = Field(
        "memory", description="If the storage is unreachable: per-process memory limits "
        "(memory), no limits (open), or 503 (closed)."
    )
    runs_on_storage_error: Literal["memory", "open", "closed"] = Field(
        "closed", description="The same for run-starting routes; closed refuses new runs "
        "with 503 rather than let them through unlimited."
    )
    storage_timeout_s: float = Field(
        0.5, gt=0, le=10, description="Socket timeout for the limit storage."
    )

    @field_validator("default_limits", "anonymous_limits", "run_limits")
    @classmethod
    def _parseable(cls, value: str, info: ValidationInfo) -> str:
        check_limit_string(value)
        return value

    @field_validator("storage_uri")
    @classmethod
    def _known_storage(cls, value: SecretStr) -> SecretStr:
        scheme, sep, _ = value.get_secret_value().partition("://")
        if not sep or scheme not in ("memory", "redis", "rediss", "redis+unix"):
            raise ValueError("must be memory:// or redis://…")  # never echo: it may hold a password
        return value

    @property
    def shared(self) -> bool:
        return not self.storage_uri.get_secret_value().startswith("memory://")


def check_limit_string(value: str) -> None:
    """Raise ValueError unless `value` is a limits string such as `10/minute;100/hour`."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit like '60/minute;1000/hour'") from None


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class CorsSettings(Section):
    """Browser cross-origin access: an allowlist of exact origins (off when empty)."""

    allow_origins: CommaList = Field(
        default_factory=list, description="Exact origins such as https://app.example.com."
    )
    allow_origin_regex: str | None = Field(
        None, description="Full-match regex for more origins; prefer [a-z0-9-]+ over .* ."
    )
    allow_credentials: bool = Field(
        False, description="Send Access-Control-Allow-Credentials; never with `*`."
    )
    allow_headers: CommaList = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "X-API-Key",
                                 "X-Request-ID", "Last-Event-ID"],
        description="Request headers a browser may send.",
    )
    max_age_s: int = Field(600, ge=0, le=86_400, description="Preflight cache time.")

    @field_validator("allow_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "null":
                # Sandboxed iframes and file:// pages send `null`; listing it trusts them all.
                raise ValueError("must not contain 'null'")
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        # Browsers send Origin in lower case; a mixed-case entry would never match.
        return [origin.lower() for origin in value]

    @field_validator("allow_origin_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regex ({exc})") from None
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        # Starlette answers `*` + credentials by reflecting any Origin with credentials
        # allowed: every website could call the API as the user.
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_origins '*' cannot be combined with allow_credentials")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.allow_origins or self.allow_origin_regex)


class HttpSettings(Section):
    """Response hardening and host checks."""

    security_headers: bool = Field(
        True, description="X-Content-Type-Options, Referrer-Policy, X-Frame-Options and "
        "Cache-Control: no-store on API responses."
    )
    hsts_max_age_s: int = Field(
        0, ge=0, description="Send Strict-Transport-Security with this max-age (0 = off; "
        "turn on when every client reaches the service over HTTPS)."
    )
    hsts_include_subdomains: bool = Field(False, description="Add includeSubDomains to HSTS.")
    allowed_hosts: CommaList = Field(
        default_factory=list, description="Accepted Host headers (`*.example.com` allowed); "
        "empty accepts any."
    )


class MetricsSettings(Section):
    """Prometheus `/metrics`: where it is served and who may read it."""

    enabled: bool = Field(True, description="Serve /metrics and collect metrics.")
    token: SecretStr | None = Field(
        None, description="Require `Authorization: Bearer <token>` on /metrics (Prometheus: "
        "`authorization.credentials_file`). Unset: no credentials, so keep /metrics off the "
        "public vhost (the shipped nginx config does) or use `port`."
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="Serve /metrics only on this extra port (same "
        "host), for scraping from inside the network; the main port then answers 404."
    )
    multiprocess_dir: Path | None = Field(
        None, description="Where gunicorn workers keep their metric files; default "
        "$PROMETHEUS_MULTIPROC_DIR, else a fresh directory made at start. Emptied at start."
    )

    @field_validator("token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            weakness = secret_weakness(value.get_secret_value())
            if weakness:
                raise ValueError(weakness)
        return value

    @property
    def public(self) -> bool:
        """Readable by anyone who can reach the main port."""
        return self.enabled and self.token is None and self.port is None


class TelemetrySettings(Section):
    """OpenTelemetry tracing; off unless an OTLP endpoint is configured."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces). "
        "Unset: $OTEL_EXPORTER_OTLP_ENDPOINT or $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else off."
    )
    service_name: str = Field("graphgate", description="`service.name` resource attribute.")
    resource_attributes: dict[str, str] = Field(
        default_factory=dict, description="More resource attributes (deployment.environment…)."
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces sampled (parent-based)."
    )
