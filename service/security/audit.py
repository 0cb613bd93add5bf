"""The security audit behind `graphgate check-config [--strict] [--format text|json]`.

`posture()` describes what the settings actually do (auth methods, CORS, rate limits,
proxies, public paths, headers, limits) and `findings()` lists what is weak about them,
each with a severity. Neither ever prints a secret: the JWT HMAC secret, the contents of
its file, API key hashes, the metrics token, and the passwords that
`rate_limit.storage_uri`, `database_url` and URLs with userinfo or a query may carry are
reduced to a name, a path, a host:port or set/unset.

Adding a check: write a small `_check_…(settings) -> Iterable[Finding]` and append it to
`CHECKS`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from service.security.api_keys import KeyStore
from service.security.paths import public_paths
from service.settings import ConfigError, Settings
from service.settings.security import HMAC_ALGORITHMS, hmac_key_bytes, secret_weakness

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")

LARGE_BODY_BYTES = 10 * 1024 * 1024
WILDCARD_SCOPE = "*"


@dataclass(frozen=True)
class Finding:
    """One weakness: how bad, a stable code, the dotted setting, and what to do."""

    severity: Severity
    code: str
    setting: str
    message: str


# --- API keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """What the audit shows of one API key: identifiers and limits, never its hash."""

    id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    rate_limit: str | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def as_posture(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "scopes": list(self.scopes),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "rate_limit": self.rate_limit,
        }


def load_key_listing(path: Path) -> list[KeyInfo]:
    """The keys in an API keys file, without their hashes; ConfigError if unloadable.

    The one place that knows how the keys file is read: through the same `KeyStore.load`
    the server uses, so the audit refuses exactly what start-up would refuse.
    """
    return [
        KeyInfo(
            id=entry["id"],
            tenant=entry["tenant"],
            name=entry["name"],
            scopes=tuple(entry["scopes"]),
            expires_at=(
                datetime.fromisoformat(entry["expires_at"]).astimezone(UTC)
                if entry["expires_at"]
                else None
            ),
            rate_limit=entry["rate_limit"],
        )
        for entry in KeyStore.load(path).entries
    ]


def _keys(settings: Settings) -> tuple[list[KeyInfo], str | None]:
    """The configured keys and, if the file cannot be loaded, why (no keys then)."""
    path = settings.auth.api_keys_file
    if path is None:
        return [], None
    try:
        return load_key_listing(path), None
    except ConfigError as exc:
        return [], str(exc)


# --- secret-free descriptions ------------------------------------------------------------


def _address(host: str | None, port: int | str | None) -> str | None:
    if not host:
        return None
    shown = f"[{host}]" if ":" in host and "," not in host else host
    return f"{shown}:{port}" if port else shown


def storage_view(uri: str) -> dict[str, Any]:
    """The rate-limit storage as kind, scheme and host:port; never the URI (password)."""
    parts = urlsplit(uri)
    if parts.scheme == "memory":
        return {"kind": "memory", "scheme": "memory"}
    view: dict[str, Any] = {"kind": "redis", "scheme": parts.scheme}
    if parts.scheme == "redis+unix":
        # redis+unix:///run/redis.sock?password=…: only the socket path, and only when
        # the URL is in the plain form (anything in the netloc may be a credential).
        view["socket"] = parts.path if not parts.netloc and "@" not in parts.path else None
        return view
    try:
        view["address"] = _address(parts.hostname, parts.port or 6379)
    except ValueError:  # a malformed port: the "host" may be part of a password
        view["address"] = None
    return view


def database_view(settings: Settings) -> dict[str, Any]:
    """The store as kind and, for Postgres, host, port and database; never the URL."""
    kind = settings.database_kind
    view: dict[str, Any] = {"kind": kind}
    if kind == "sqlite":
        view["path"] = str(settings.sqlite_path)
    elif kind == "postgres" and settings.database_url is not None:
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(settings.database_url.get_secret_value())
        except Exception:  # validated at load; never echo libpq's message (it quotes the URL)
            info = {}
        host = info.get("host")
        view["address"] = _address(str(host) if host else None, info.get("port") or 5432)
        view["database"] = info.get("dbname")
    return view


def _url_without_credentials(url: str) -> str:
    """scheme://host:port/path: userinfo, query and fragment dropped (the query as `?…`)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        # `user:pw@host:4318` parses as scheme `user` and path `pw@host:4318`.
        return "(not a scheme://host URL)"
    try:
        netloc = _address(parts.hostname, parts.port) or ""
        path = parts.path
    except ValueError:
        # A malformed port: `user:p/w@host` splits a password across netloc and path.
        netloc, path = "?", ""
    if "@" in path:  # the rest of a userinfo the parser did not recognise as one
        path = "/…"
    shown = f"{parts.scheme}://{netloc}{path}"
    return shown + ("?…" if parts.query else "")


def jwt_key_source(settings: Settings) -> str | None:
    """Where JWT verification keys come from, as text safe to print."""
    jwt = settings.auth.jwt
    if jwt.secret is not None:
        return "secret"
    if jwt.secret_file is not None:
        return f"secret_file: {jwt.secret_file}"
    if jwt.public_key_file is not None:
        return f"public_key_file: {jwt.public_key_file}"
    if jwt.jwks_file is not None:
        return f"jwks_file: {jwt.jwks_file}"
    if jwt.jwks_url is not None:
        return f"jwks_url: {_url_without_credentials(jwt.jwks_url)}"
    return None


# --- posture ----------------------------------------------------------------------------


def _jwt_posture(settings: Settings) -> dict[str, Any]:
    jwt = settings.auth.jwt
    return {
        "enabled": jwt.enabled,
        "algorithms": list(jwt.algorithms),
        "issuer": jwt.issuer,
        "audience": jwt.audience,
        "key_source": jwt_key_source(settings),
        "jwks_cache_ttl_s": jwt.jwks_cache_ttl_s,
        "leeway_s": jwt.leeway_s,
        "max_token_age_s": jwt.max_token_age_s,
        "max_token_bytes": jwt.max_token_bytes,
        "token_types": list(jwt.token_types),
        "claims": {
            "tenant": jwt.tenant_claim,
            "default_tenant": jwt.default_tenant,
            "scopes": jwt.scopes_claim,
            "rate_limit": jwt.rate_limit_claim,
        },
    }


def _auth_posture(settings: Settings) -> dict[str, Any]:
    auth = settings.auth
    keys, error = _keys(settings)
    api_keys: dict[str, Any] | None = None
    if auth.api_keys_file is not None:
        api_keys = {
            "file": str(auth.api_keys_file),
            "error": error,
            "keys": [key.as_posture() for key in keys],
        }
    return {
        "enabled": auth.enabled,
        "methods": auth.methods,
        "api_keys": api_keys,
        "jwt": _jwt_posture(settings),
        "share_threads_within_tenant": auth.share_threads_within_tenant,
    }


def posture(settings: Settings) -> dict[str, Any]:
    """The effective security posture, JSON-able and free of secrets."""
    rate = settings.rate_limit
    cors = settings.cors
    http = settings.http
    return {
        "env": settings.env,
        "auth": _auth_posture(settings),
        "public_paths": public_paths(settings),
        "rate_limit": {
            "enabled": rate.enabled,
            "storage": storage_view(rate.storage_uri.get_secret_value()),
            "strategy": rate.strategy,
            "default_limits": rate.default_limits,
            "anonymous_limits": rate.anonymous_limits,
            "run_limits": rate.run_limits,
            "max_concurrent_streams": rate.max_concurrent_streams,
            "on_storage_error": rate.on_storage_error,
            "runs_on_storage_error": rate.runs_on_storage_error,
        },
        "trusted_proxies": list(settings.server.trusted_proxies),
        "cors": {
            "enabled": cors.enabled,
            "allow_origins": list(cors.allow_origins),
            "allow_origin_regex": cors.allow_origin_regex,
            "allow_credentials": cors.allow_credentials,
            "allow_headers": list(cors.allow_headers),
            "max_age_s": cors.max_age_s,
        },
        "http": {
            "security_headers": http.security_headers,
            "hsts": {
                "enabled": http.hsts_max_age_s > 0,
                "max_age_s": http.hsts_max_age_s,
                "include_subdomains": http.hsts_include_subdomains,
            },
            "allowed_hosts": list(http.allowed_hosts),
        },
        "limits": {
            "max_body_bytes": settings.limits.max_body_bytes,
            "max_message_chars": settings.limits.max_message_chars,
        },
        "server": {
            "host": settings.server.host,
            "port": settings.server.port,
            "workers": settings.server.worker_count,
        },
        "database": database_view(settings),
        "metrics": _metrics_posture(settings),
        "telemetry": _telemetry_posture(settings),
    }


def _metrics_posture(settings: Settings) -> dict[str, Any]:
    metrics = settings.metrics
    return {
        "enabled": metrics.enabled,
        "token": metrics.token is not None,  # whether one is set; never its value
        "port": metrics.port,
        "public": metrics.public,
    }


def _telemetry_posture(settings: Settings) -> dict[str, Any]:
    endpoint = settings.telemetry.otlp_endpoint
    return {
        # Collectors often take a token in the userinfo or the query: show neither.
        "otlp_endpoint": _url_without_credentials(endpoint) if endpoint else None,
    }


# --- checks -----------------------------------------------------------------------------

Check = Callable[[Settings], Iterable[Finding]]


def _check_env(settings: Settings) -> Iterable[Finding]:
    if settings.env == "development":
        yield Finding(
            "warning", "env-development", "env",
            "env is development, which skips production's refusals (auth off, no issuer or "
            "audience); set env = \"production\" for any deployment.",
        )


def _check_auth_enabled(settings: Settings) -> Iterable[Finding]:
    auth = settings.auth
    if not auth.enabled:
        yield Finding(
            "critical", "auth-disabled", "auth.enabled",
            "auth is off: every caller is one anonymous principal with full access; set "
            "auth.enabled = true and configure API keys or JWT.",
        )
    elif not auth.methods:
        yield Finding(
            "critical", "auth-no-methods", "auth.api_keys_file",
            "auth is on but no method is configured, so no request can authenticate; set "
            "auth.api_keys_file or an [auth.jwt] key source.",
        )


def _read_secret_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode().strip()
    except UnicodeDecodeError:  # a raw binary key: length is what matters
        return data.decode("latin-1")


def _hmac_secret_weakness(secret: str, algorithms: Sequence[str]) -> str | None:
    """Why a secret is unfit for these HMAC algorithms, or None (start-up's own rules)."""
    weakness = secret_weakness(secret)
    if weakness:
        return weakness
    needed = hmac_key_bytes(list(algorithms))
    if len(secret.encode()) < needed:  # RFC 7518 3.2: at least the hash's length
        return f"is shorter than {needed} bytes, the minimum for {', '.join(algorithms)}"
    return None


def _check_jwt_secret(settings: Settings) -> Iterable[Finding]:
    jwt = settings.auth.jwt
    if jwt.secret is not None:
        weakness = _hmac_secret_weakness(jwt.secret.get_secret_value(), jwt.algorithms)
        if weakness:
            yield Finding(
                "critical", "jwt-weak-secret", "auth.jwt.secret",
                f"the JWT HMAC secret {weakness}, so tokens can be forged by guessing it; "
                "use at least 32 random bytes (e.g. `openssl rand -base64 48`).",
            )
    if jwt.secret_file is not None:
        try:
            secret = _read_secret_file(jwt.secret_file)
        except FileNotFoundError:
            yield Finding(
                "critical", "jwt-secret-file-missing", "auth.jwt.secret_file",
                f"the JWT secret file {jwt.secret_file} does not exist, so JWT auth cannot "
                "start; create it or fix the path.",
            )
            return
        except OSError as exc:
            yield Finding(
                "info", "jwt-secret-file-unchecked", "auth.jwt.secret_file",
                f"the JWT secret file {jwt.secret_file} could not be read here "
                f"({exc.strerror}); run check-config as the service user to check it.",
            )
            return
        weakness = _hmac_secret_weakness(secret, jwt.algorithms)
        if weakness:
            yield Finding(
                "critical", "jwt-weak-secret", "auth.jwt.secret_file",
                f"the JWT HMAC secret in {jwt.secret_file} {weakness}, so tokens can be "
                "forged by guessing it; use at least 32 random bytes.",
            )


def _check_jwt_claims(settings: Settings) -> Iterable[Finding]:
    jwt = settings.auth.jwt
    if not jwt.enabled:
        return
    if not jwt.issuer:
        yield Finding(
            "warning", "jwt-no-issuer", "auth.jwt.issuer",
            "JWTs are accepted from any issuer the key signs for; set auth.jwt.issuer to "
            "your identity provider's `iss`.",
        )
    if not jwt.audience:
        yield Finding(
            "warning", "jwt-no-audience", "auth.jwt.audience",
            "JWTs minted for other APIs are accepted; set auth.jwt.audience to this API's "
            "identifier.",
        )
    if jwt.max_token_age_s is None:
        yield Finding(
            "info", "jwt-no-max-age", "auth.jwt.max_token_age_s",
            "tokens of any age are accepted until they expire; set auth.jwt.max_token_age_s "
            "to bound long-lived tokens.",
        )
    if not jwt.token_types:
        yield Finding(
            "info", "jwt-any-token-type", "auth.jwt.token_types",
            "any `typ` is accepted, so ID tokens work as access tokens; set "
            "auth.jwt.token_types = [\"at+jwt\"] if your provider issues RFC 9068 tokens.",
        )
    if jwt.algorithms[0] in HMAC_ALGORITHMS:
        yield Finding(
            "info", "jwt-shared-secret", "auth.jwt.algorithms",
            "JWTs are verified with a shared HMAC secret that anyone who verifies can also "
            "sign with; prefer RS256/ES256 with your provider's JWKS.",
        )


def _check_api_keys(settings: Settings) -> Iterable[Finding]:
    path = settings.auth.api_keys_file
    if path is None:
        return
    keys, error = _keys(settings)
    if error is not None:
        yield Finding(
            "critical", "api-keys-unloadable", "auth.api_keys_file",
            f"{error}; no API key can authenticate until the file loads.",
        )
        return
    if not keys:
        yield Finding(
            "info", "api-keys-empty", "auth.api_keys_file",
            f"{path} holds no keys; create one with `graphgate keys create`.",
        )
    wildcard = [key.id for key in keys if WILDCARD_SCOPE in key.scopes]
    if wildcard:
        yield Finding(
            "info", "api-key-wildcard-scope", "auth.api_keys_file",
            f"keys with scope '*' (everything, including future scopes): "
            f"{', '.join(wildcard)}; grant only the scopes each caller needs.",
        )
    forever = [key.id for key in keys if key.expires_at is None]
    if forever:
        yield Finding(
            "info", "api-key-no-expiry", "auth.api_keys_file",
            f"keys that never expire: {', '.join(forever)}; set expires_at and rotate them.",
        )
    now = datetime.now(UTC)
    expired = [key.id for key in keys if key.expired(now)]
    if expired:
        yield Finding(
            "warning", "api-key-expired", "auth.api_keys_file",
            f"expired keys are still in the file: {', '.join(expired)}; remove them.",
        )


def _check_cors_origins(settings: Settings) -> Iterable[Finding]:
    cors = settings.cors
    if "*" in cors.allow_origins:
        severity: Severity = "critical" if cors.allow_credentials else "warning"
        yield Finding(
            severity, "cors-wildcard-origin", "cors.allow_origins",
            "allow_origins contains '*', so any website can call the API from its users' "
            "browsers; list the exact origins of your front ends instead.",
        )


def _unescaped_dots(pattern: str) -> list[int]:
    """The positions of every `.` outside a character class and not escaped.

    Each one matches any character: `.*`/`.+` match whole hosts, and the dot in
    `https://[a-z0-9-]+.example.com` lets https://attacker-example.com through.
    """
    found: list[int] = []
    index, in_class = 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[index + 1 : index + 2] == "^":  # `[^…]`: a negated class
                index += 1
            if pattern[index + 1 : index + 2] == "]":  # `[]…]`, `[^]…]`: a literal ] first
                index += 1
        elif char == ".":
            found.append(index)
        index += 1
    return found


def _check_cors_regex(settings: Settings) -> Iterable[Finding]:
    regex = settings.cors.allow_origin_regex
    if regex is None:
        return
    dots = _unescaped_dots(regex)
    if not dots:
        return
    if any(regex[index + 1 : index + 2] in ("*", "+", "{") for index in dots):
        problem = "uses `.*` or `.+`, which also match hosts such as https://evil.com/"
    else:
        problem = ("has an unescaped `.`, which matches any character (so "
                   "[a-z0-9-]+.example.com also matches https://attacker-example.com)")
    yield Finding(
        "warning", "cors-permissive-regex", "cors.allow_origin_regex",
        f"allow_origin_regex {problem}; use [a-z0-9-]+ for a subdomain label and escape "
        "dots (\\.).",
    )


def _trusts_everyone(entry: str) -> bool:
    if entry == "*":
        return True
    try:
        return ipaddress.ip_network(entry, strict=False).prefixlen == 0
    except ValueError:
        return False


def _check_trusted_proxies(settings: Settings) -> Iterable[Finding]:
    everyone = [p for p in settings.server.trusted_proxies if _trusts_everyone(p)]
    if everyone:
        yield Finding(
            "critical", "trusted-proxies-any", "server.trusted_proxies",
            f"trusted_proxies includes {', '.join(everyone)}, so any client can spoof its IP "
            "with X-Forwarded-For (evading IP rate limits, forging logs); list only your "
            "proxy's address.",
        )


def _check_rate_limit_enabled(settings: Settings) -> Iterable[Finding]:
    if not settings.rate_limit.enabled:
        yield Finding(
            "warning", "rate-limit-disabled", "rate_limit.enabled",
            "rate limiting is off, so one caller can exhaust the service (and any paid model "
            "behind it); set rate_limit.enabled = true.",
        )


def _check_ip_limits_without_proxies(settings: Settings) -> Iterable[Finding]:
    anonymous_in_use = not settings.auth.enabled or settings.metrics.public
    if (
        settings.rate_limit.enabled
        and anonymous_in_use
        and not settings.server.trusted_proxies
    ):
        yield Finding(
            "warning", "ip-limits-without-proxies", "server.trusted_proxies",
            "anonymous limits are keyed by client IP but trusted_proxies is empty: behind a "
            "proxy every client shares the proxy's address and bucket; set "
            "server.trusted_proxies to the proxy's address.",
        )


def _check_memory_storage_workers(settings: Settings) -> Iterable[Finding]:
    rate, workers = settings.rate_limit, settings.server.worker_count
    if rate.enabled and not rate.shared and workers > 1:
        yield Finding(
            "warning", "rate-limit-memory-multiworker", "rate_limit.storage_uri",
            f"memory:// rate-limit storage with {workers} workers: each worker counts "
            f"separately, so limits are {workers}x looser and stream caps are per process; "
            "use a redis:// storage_uri.",
        )


def _check_storage_error_policy(settings: Settings) -> Iterable[Finding]:
    rate = settings.rate_limit
    if not rate.enabled:
        return
    for name in ("on_storage_error", "runs_on_storage_error"):
        if getattr(rate, name) != "open":
            continue
        if rate.shared:
            yield Finding(
                "warning", "rate-limit-fail-open", f"rate_limit.{name}",
                f"{name} is open: when the limit storage is unreachable, requests go through "
                "unlimited; use memory (per-process limits) or closed (503).",
            )
        else:
            yield Finding(
                "info", "rate-limit-fail-open", f"rate_limit.{name}",
                f"{name} is open, which does nothing with memory:// storage but would lift "
                "all limits on a redis outage; use memory or closed.",
            )


def _check_stream_cap(settings: Settings) -> Iterable[Finding]:
    if settings.rate_limit.max_concurrent_streams == 0:
        yield Finding(
            "warning", "streams-uncapped", "rate_limit.max_concurrent_streams",
            "open SSE streams per principal are not capped, so one caller can hold every "
            "worker's connections; set rate_limit.max_concurrent_streams (default 8).",
        )


def _check_metrics(settings: Settings) -> Iterable[Finding]:
    if settings.metrics.public:
        yield Finding(
            "warning", "metrics-public", "metrics.token",
            "/metrics is readable without credentials by anyone who reaches the main port "
            "and reveals traffic, tenants' activity and errors; make sure the proxy blocks "
            "/metrics or set metrics.port / metrics.token.",
        )


def _check_hsts(settings: Settings) -> Iterable[Finding]:
    if settings.http.hsts_max_age_s == 0:
        severity: Severity = "warning" if settings.env == "production" else "info"
        yield Finding(
            severity, "hsts-off", "http.hsts_max_age_s",
            "HSTS is off, so browsers may be downgraded to plain HTTP; set "
            "http.hsts_max_age_s = 31536000 once every client uses HTTPS.",
        )


def _check_security_headers(settings: Settings) -> Iterable[Finding]:
    if not settings.http.security_headers:
        yield Finding(
            "warning", "security-headers-off", "http.security_headers",
            "security headers are off (nosniff, no-store, frame denial); responses may be "
            "cached or framed; set http.security_headers = true.",
        )


def _check_allowed_hosts(settings: Settings) -> Iterable[Finding]:
    if not settings.http.allowed_hosts:
        yield Finding(
            "info", "allowed-hosts-empty", "http.allowed_hosts",
            "any Host header is accepted; set http.allowed_hosts to your API's host names "
            "to refuse DNS-rebinding and host-header tricks.",
        )


def _check_database(settings: Settings) -> Iterable[Finding]:
    if settings.database_kind == "memory":
        yield Finding(
            "warning", "database-memory", "database_url",
            "database_url is memory:, so threads are lost on restart and not shared between "
            "workers; use sqlite:///… or postgresql://….",
        )


def _check_body_limit(settings: Settings) -> Iterable[Finding]:
    size = settings.limits.max_body_bytes
    if size > LARGE_BODY_BYTES:
        yield Finding(
            "warning", "body-limit-large", "limits.max_body_bytes",
            f"max_body_bytes is {size} (over 10 MiB), so a few large requests can exhaust "
            "memory; keep it near the default 1 MiB.",
        )


CHECKS: tuple[Check, ...] = (
    _check_env,
    _check_auth_enabled,
    _check_jwt_secret,
    _check_jwt_claims,
    _check_api_keys,
    _check_cors_origins,
    _check_cors_regex,
    _check_trusted_proxies,
    _check_rate_limit_enabled,
    _check_ip_limits_without_proxies,
    _check_memory_storage_workers,
    _check_storage_error_policy,
    _check_stream_cap,
    _check_metrics,
    _check_hsts,
    _check_security_headers,
    _check_allowed_hosts,
    _check_database,
    _check_body_limit,
)


def findings(settings: Settings) -> list[Finding]:
    """Every weakness in the settings, most severe first (check order within a severity)."""
    found = [finding for check in CHECKS for finding in check(settings)]
    return sorted(found, key=lambda finding: SEVERITIES.index(finding.severity))


def summary(found: Sequence[Finding]) -> dict[str, int]:
    return {severity: sum(f.severity == severity for f in found) for severity in SEVERITIES}


def exit_code(found: Sequence[Finding], strict: bool) -> int:
    """1 on any critical finding; with strict, also on any warning; else 0."""
    failing: tuple[Severity, ...] = ("critical", "warning") if strict else ("critical",)
    return 1 if any(finding.severity in failing for finding in found) else 0


# --- rendering --------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _render_mapping(mapping: Mapping[str, Any], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key}:")
            _render_mapping(value, indent + 1, lines)
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            lines.append(f"{pad}{key}:")
            for item in value:
                fields = ", ".join(f"{k}={_render_item_field(v)}" for k, v in item.items())
                lines.append(f"{pad}  - {fields}")
        else:
            lines.append(f"{pad}{key}: {_render_list_or_scalar(value)}")


def _render_item_field(value: Any) -> str:
    # Inside a `k=v, k=v` row a list is space-separated, like OAuth scopes.
    if isinstance(value, list):
        return " ".join(_scalar(item) for item in value) if value else "(none)"
    return _scalar(value)


def _render_list_or_scalar(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_scalar(item) for item in value) if value else "(none)"
    return _scalar(value)


def render_text(posture: Mapping[str, Any], findings: Sequence[Finding]) -> str:
    """The posture as an indented outline, then the findings, then a one-line summary."""
    lines = ["Security posture", ""]
    _render_mapping(posture, 1, lines)
    lines += ["", "Findings"]
    if not findings:
        lines.append("  none")
    for finding in findings:
        lines.append(
            f"  {finding.severity.upper():<8} {finding.code} ({finding.setting}): "
            f"{finding.message}"
        )
    counts = summary(findings)
    lines += ["", ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)]
    return "\n".join(lines) + "\n"


def render_json(posture: Mapping[str, Any], findings: Sequence[Finding]) -> str:
    """{"posture": …, "findings": […], "summary": {"critical": n, "warning": n, "info": n}}."""
    document = {
        "posture": posture,
        "findings": [asdict(finding) for finding in findings],
        "summary": summary(findings),
    }
    return json.dumps(document, indent=2) + "\n"


RENDERERS: dict[str, Callable[[Mapping[str, Any], Sequence[Finding]], str]] = {
    "text": render_text,
    "json": render_json,
}


def run_check_config(settings: Settings, *, fmt: str, strict: bool, out: TextIO) -> int:
    """Write the posture and findings to `out` in `fmt` (text or json); the exit code."""
    try:
        render = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(RENDERERS)}") from None
    found = findings(settings)
    out.write(render(posture(settings), found))
    return exit_code(found, strict)
