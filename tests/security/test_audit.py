"""`graphgate check-config`: posture, findings, rendering, exit codes, and no secret leaks."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from service.security.api_keys import generate_key, hash_key
from service.security.audit import (
    Finding,
    exit_code,
    findings,
    posture,
    render_json,
    render_text,
    run_check_config,
    storage_view,
)
from service.security.paths import DOCS_PATHS, public_paths
from service.settings import Settings, load_settings

PRODUCTION_EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "production.toml"

JWT_SECRET = "Zq8vN3xL0pR7tY2wK5mB9cF4hJ6gD1sA-uE_iO"  # strong: passes secret_weakness
REDIS_PASSWORD = "r3dis-Pa55word"
PG_PASSWORD = "pg-S3cret-Pw"
METRICS_TOKEN = "mT9xQ2vL7pR4wZ8nB3cH6jD1fG5yK0s-aE_uI"  # strong: passes secret_weakness
# The baseline serves /metrics on its own port; without it /metrics is public on the main port.
PUBLIC_METRICS: dict[str, Any] = {"metrics": {"port": None}}
FUTURE = datetime.now(UTC) + timedelta(days=365)
PAST = datetime.now(UTC) - timedelta(days=1)


def write_keys(path: Path, entries: list[dict[str, Any]]) -> tuple[Path, list[str]]:
    """A keys file with these entries (hash added); returns it and the hashes written."""
    hashes = []
    blocks = []
    for entry in entries:
        _, key = generate_key()
        digest = hash_key(key)
        hashes.append(digest)
        lines = [
            "[[keys]]",
            f'id = "{entry["id"]}"',
            f'hash = "{digest}"',
            f'tenant = "{entry.get("tenant", "acme")}"',
            f'name = "{entry.get("name", "a key")}"',
            f"scopes = {json.dumps(entry.get('scopes', ['threads:read']))}",
        ]
        if entry.get("expires_at") is not None:
            lines.append(f"expires_at = {entry['expires_at'].strftime('%Y-%m-%dT%H:%M:%SZ')}")
        if entry.get("rate_limit"):
            lines.append(f'rate_limit = "{entry["rate_limit"]}"')
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path, hashes


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    """A clean keys file: restricted scopes, every key expiring in the future."""
    path, _ = write_keys(
        tmp_path / "keys.toml",
        [
            {"id": "ci-bot", "scopes": ["runs:create", "threads:read"], "expires_at": FUTURE},
            {"id": "reader", "scopes": ["threads:read"], "expires_at": FUTURE,
             "rate_limit": "10/minute"},
        ],
    )
    return path


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


Secure = Callable[..., Settings]


@pytest.fixture
def secure(keys_file: Path) -> Secure:
    """Settings shaped like the production example, with `changes` deep-merged in."""
    base: dict[str, Any] = {
        "env": "production",
        "database_url": "postgresql://graphgate@db.internal/graphgate",
        "server": {"host": "0.0.0.0", "workers": 4, "trusted_proxies": ["10.0.0.10"]},
        "auth": {
            "api_keys_file": keys_file,
            "jwt": {
                "algorithms": ["RS256"],
                "jwks_url": "https://idp.example.com/.well-known/jwks.json",
                "issuer": "https://idp.example.com/",
                "audience": "https://api.example.com",
                "token_types": ["at+jwt"],
            },
        },
        "rate_limit": {"storage_uri": "redis://redis.internal:6379/0"},
        "cors": {"allow_origins": ["https://app.example.com"]},
        "http": {"hsts_max_age_s": 31_536_000, "allowed_hosts": ["api.example.com"]},
        "metrics": {"port": 9464},
    }

    def build(**changes: Any) -> Settings:
        return Settings(**merge(base, changes))

    return build


def codes(found: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.code, f.severity, f.setting) for f in found}


def output_of(settings: Settings, fmt: str, strict: bool = True) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check_config(settings, fmt=fmt, strict=strict, out=out)
    return code, out.getvalue()


# --- the production example ---------------------------------------------------------------


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, keys_file: Path) -> Settings:
    """docs/examples/production.toml, with its keys file pointed at a real one."""
    monkeypatch.setenv("GRAPHGATE_CONFIG", str(PRODUCTION_EXAMPLE))
    monkeypatch.setenv("GRAPHGATE_AUTH__API_KEYS_FILE", str(keys_file))
    return load_settings()


def test_production_example_loads_as_documented(production: Settings) -> None:
    """The example is a valid production config with the documented choices."""
    assert production.env == "production"
    assert production.auth.methods == ["api_key", "jwt"]
    assert production.auth.jwt.algorithms == ["RS256"]
    assert production.auth.jwt.jwks_url == "https://idp.example.com/.well-known/jwks.json"
    assert production.auth.jwt.token_types == ["at+jwt"]
    assert production.rate_limit.shared
    assert production.server.workers == 4
    assert production.cors.allow_origins == ["https://app.example.com"]
    assert not production.cors.allow_credentials
    assert production.http.hsts_max_age_s == 31_536_000
    assert production.http.allowed_hosts == ["api.example.com"]
    assert production.database_kind == "postgres"
    assert production.metrics.enabled and production.metrics.port == 9464
    assert production.metrics.token is None
    assert not production.metrics.public  # the main port answers 404 for /metrics


def test_production_example_names_the_documented_keys_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the override, the example points at /etc/graphgate/keys.toml."""
    monkeypatch.setenv("GRAPHGATE_CONFIG", str(PRODUCTION_EXAMPLE))
    assert load_settings().auth.api_keys_file == Path("/etc/graphgate/keys.toml")


def test_production_example_has_no_warning_or_critical(production: Settings) -> None:
    """findings() on the example has nothing above info."""
    assert [f for f in findings(production) if f.severity != "info"] == []


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_production_example_passes_strict(production: Settings, fmt: str) -> None:
    """`check-config --strict` exits 0 on the example, in both formats."""
    code, text = output_of(production, fmt, strict=True)
    assert code == 0
    if fmt == "json":
        document = json.loads(text)
        assert document["summary"]["critical"] == 0
        assert document["summary"]["warning"] == 0
        assert document["posture"]["env"] == "production"
        assert document["posture"]["metrics"] == {
            "enabled": True, "token": False, "port": 9464, "public": False}
    else:
        assert "0 critical, 0 warning" in text


def test_production_example_with_missing_keys_file_is_critical(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A keys file that is not there is a critical finding and a failing exit code."""
    monkeypatch.setenv("GRAPHGATE_CONFIG", str(PRODUCTION_EXAMPLE))
    monkeypatch.setenv("GRAPHGATE_AUTH__API_KEYS_FILE", str(tmp_path / "absent.toml"))
    settings = load_settings()
    found = findings(settings)
    assert ("api-keys-unloadable", "critical", "auth.api_keys_file") in codes(found)
    assert exit_code(found, strict=False) == 1
    api_keys = posture(settings)["auth"]["api_keys"]
    assert api_keys["keys"] == []
    assert "absent.toml" in api_keys["error"]


# --- posture --------------------------------------------------------------------------------


def test_posture_of_the_secure_baseline(secure: Secure) -> None:
    """The posture shows auth, keys, limits, proxies, CORS, headers and public paths."""
    view = posture(secure())
    json.dumps(view)  # JSON-able
    assert view["env"] == "production"
    auth = view["auth"]
    assert auth["enabled"] is True
    assert auth["methods"] == ["api_key", "jwt"]
    assert [key["id"] for key in auth["api_keys"]["keys"]] == ["ci-bot", "reader"]
    reader = auth["api_keys"]["keys"][1]
    assert reader == {
        "id": "reader",
        "tenant": "acme",
        "name": "a key",
        "scopes": ["threads:read"],
        "expires_at": FUTURE.replace(microsecond=0).isoformat(),
        "rate_limit": "10/minute",
    }
    jwt = auth["jwt"]
    assert jwt["algorithms"] == ["RS256"]
    assert jwt["issuer"] == "https://idp.example.com/"
    assert jwt["audience"] == "https://api.example.com"
    assert jwt["key_source"] == "jwks_url: https://idp.example.com/.well-known/jwks.json"
    assert jwt["token_types"] == ["at+jwt"]
    assert jwt["max_token_age_s"] == 86_400
    assert jwt["claims"]["tenant"] == "tenant"
    assert auth["share_threads_within_tenant"] is False
    # /metrics skips API-key/JWT auth (it checks its own token and port).
    assert view["public_paths"] == ["/healthz", "/readyz", "/ok", "/metrics"]
    assert view["rate_limit"]["storage"] == {
        "kind": "redis", "scheme": "redis", "address": "redis.internal:6379"
    }
    assert view["rate_limit"]["runs_on_storage_error"] == "closed"
    assert view["trusted_proxies"] == ["10.0.0.10"]
    assert view["cors"]["allow_origins"] == ["https://app.example.com"]
    assert view["http"]["hsts"] == {
        "enabled": True, "max_age_s": 31_536_000, "include_subdomains": False
    }
    assert view["http"]["allowed_hosts"] == ["api.example.com"]
    assert view["limits"]["max_body_bytes"] == 1_048_576
    assert view["server"]["workers"] == 4
    assert view["database"] == {
        "kind": "postgres", "address": "db.internal:5432", "database": "graphgate"
    }
    assert view["metrics"] == {"enabled": True, "token": False, "port": 9464, "public": False}
    assert view["telemetry"] == {"otlp_endpoint": None}


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"port": 9464}, {"enabled": True, "token": False, "port": 9464, "public": False}),
    ({"port": None}, {"enabled": True, "token": False, "port": None, "public": True}),
    ({"port": None, "token": METRICS_TOKEN},
     {"enabled": True, "token": True, "port": None, "public": False}),
    ({"port": 9464, "token": METRICS_TOKEN},
     {"enabled": True, "token": True, "port": 9464, "public": False}),
    ({"port": None, "enabled": False},
     {"enabled": False, "token": False, "port": None, "public": False}),
])
def test_metrics_posture(
    secure: Secure, metrics: dict[str, Any], expected: dict[str, Any]
) -> None:
    """enabled, whether a token is set (never its value), the port, and whether it is public."""
    view = posture(secure(metrics=metrics))
    assert view["metrics"] == expected
    assert ("/metrics" in view["public_paths"]) == expected["enabled"]


@pytest.mark.parametrize("metrics", [
    {"port": 9464}, {"port": None, "token": METRICS_TOKEN}, {"port": None, "enabled": False},
])
def test_metrics_behind_a_port_or_token_or_off_is_not_reported(
    secure: Secure, metrics: dict[str, Any]
) -> None:
    """Only /metrics readable on the main port without a token is a finding."""
    found = findings(secure(metrics=metrics, server={"trusted_proxies": []}))
    assert not {"metrics-public", "ip-limits-without-proxies"} & {f.code for f in found}


@pytest.mark.parametrize(("env", "metrics_enabled", "expected"), [
    ("production", False, ["/healthz", "/readyz", "/ok"]),
    ("production", True, ["/healthz", "/readyz", "/ok", "/metrics"]),
    ("development", False,
     ["/healthz", "/readyz", "/ok", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"]),
    ("development", True,
     ["/healthz", "/readyz", "/ok", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json",
      "/redoc"]),
])
def test_public_paths_are_the_apps(
    secure: Secure, env: str, metrics_enabled: bool, expected: list[str]
) -> None:
    """The audit lists what the app serves without credentials: the docs in development too."""
    settings = secure(env=env, metrics={"enabled": metrics_enabled})
    assert posture(settings)["public_paths"] == expected
    assert posture(settings)["public_paths"] == public_paths(settings)  # the app's own list
    assert set(DOCS_PATHS).isdisjoint(expected) == (env == "production")


def test_jwt_key_source_names_files_by_path(secure: Secure, tmp_path: Path) -> None:
    """A file key source is shown by its path; an inline secret only as "secret"."""
    pem = tmp_path / "idp.pem"
    settings = secure(auth={"jwt": {"jwks_url": None, "public_key_file": pem}})
    assert posture(settings)["auth"]["jwt"]["key_source"] == f"public_key_file: {pem}"
    hmac = secure(env="development", auth={"jwt": {
        "jwks_url": None, "algorithms": ["HS256"], "secret": JWT_SECRET}})
    assert posture(hmac)["auth"]["jwt"]["key_source"] == "secret"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("memory://", {"kind": "memory", "scheme": "memory"}),
        ("redis://redis:6379/0", {"kind": "redis", "scheme": "redis", "address": "redis:6379"}),
        (f"redis://:{REDIS_PASSWORD}@cache.internal/0",
         {"kind": "redis", "scheme": "redis", "address": "cache.internal:6379"}),
        (f"rediss://app:{REDIS_PASSWORD}@[fd00::5]:6380/1",
         {"kind": "redis", "scheme": "rediss", "address": "[fd00::5]:6380"}),
        (f"redis+unix:///run/redis.sock?password={REDIS_PASSWORD}",
         {"kind": "redis", "scheme": "redis+unix", "socket": "/run/redis.sock"}),
        (f"redis://:{REDIS_PASSWORD}/x@host:6379/0",
         {"kind": "redis", "scheme": "redis", "address": None}),
    ],
)
def test_storage_view_never_shows_the_uri(uri: str, expected: dict[str, Any]) -> None:
    """Storage is reduced to kind, scheme and host:port (or a socket path)."""
    view = storage_view(uri)
    assert view == expected
    assert REDIS_PASSWORD not in json.dumps(view)


# --- findings --------------------------------------------------------------------------------


def test_secure_baseline_has_no_findings_above_info(secure: Secure) -> None:
    """The baseline the weak cases modify passes strict, so each case's failure is its own."""
    found = findings(secure())
    assert [f for f in found if f.severity != "info"] == []
    assert exit_code(found, strict=True) == 0


@pytest.fixture
def weak_files(tmp_path: Path) -> dict[str, Path]:
    """Files some weak cases point at: weak secret files, broken and stale keys files."""
    short_secret = tmp_path / "short.key"
    short_secret.write_text("tooshort\n", encoding="utf-8")
    repetitive = tmp_path / "repetitive.key"
    repetitive.write_text("ab" * 40, encoding="utf-8")
    hs384_short = tmp_path / "hs384-short.key"  # strong for HS256, short for HS384 (48)
    hs384_short.write_text(JWT_SECRET + "\n", encoding="utf-8")
    bad_keys = tmp_path / "bad-keys.toml"
    bad_keys.write_text('[[keys]]\nid = "x"\n', encoding="utf-8")
    expired, _ = write_keys(
        tmp_path / "expired.toml",
        [{"id": "old", "expires_at": PAST}, {"id": "new", "expires_at": FUTURE}],
    )
    return {
        "short_secret": short_secret,
        "repetitive_secret": repetitive,
        "hs384_short_secret": hs384_short,
        "absent_secret": tmp_path / "absent.key",
        "absent_keys": tmp_path / "absent.toml",
        "bad_keys": bad_keys,
        "expired_keys": expired,
    }


Changes = Callable[[dict[str, Path]], dict[str, Any]]
DEV = "development"


def _hmac_file(name: str, algorithm: str = "HS256") -> Changes:
    return lambda files: {"auth": {"jwt": {
        "jwks_url": None, "algorithms": [algorithm], "secret_file": files[name]}}}


def _keys_file(name: str) -> Changes:
    return lambda files: {"auth": {"api_keys_file": files[name]}}


def _fixed(changes: dict[str, Any]) -> Changes:
    return lambda files: changes


WEAK_CASES = [
    pytest.param(_fixed({"env": DEV}), "env-development", "warning", "env", id="env-dev"),
    pytest.param(_fixed({"env": DEV, "auth": {"enabled": False}}),
                 "auth-disabled", "critical", "auth.enabled", id="auth-off"),
    pytest.param(_fixed({"env": DEV, "auth": {"api_keys_file": None, "jwt": {"jwks_url": None}}}),
                 "auth-no-methods", "critical", "auth.api_keys_file", id="no-auth-methods"),
    pytest.param(_hmac_file("short_secret"), "jwt-weak-secret", "critical",
                 "auth.jwt.secret_file", id="secret-file-short"),
    pytest.param(_hmac_file("repetitive_secret"), "jwt-weak-secret", "critical",
                 "auth.jwt.secret_file", id="secret-file-repetitive"),
    pytest.param(_hmac_file("hs384_short_secret", "HS384"), "jwt-weak-secret", "critical",
                 "auth.jwt.secret_file", id="secret-file-short-for-hs384"),
    pytest.param(_hmac_file("absent_secret"), "jwt-secret-file-missing", "critical",
                 "auth.jwt.secret_file", id="secret-file-missing"),
    pytest.param(_fixed({"env": DEV, "auth": {"jwt": {"issuer": None}}}),
                 "jwt-no-issuer", "warning", "auth.jwt.issuer", id="no-issuer"),
    pytest.param(_fixed({"env": DEV, "auth": {"jwt": {"audience": None}}}),
                 "jwt-no-audience", "warning", "auth.jwt.audience", id="no-audience"),
    pytest.param(_keys_file("absent_keys"), "api-keys-unloadable", "critical",
                 "auth.api_keys_file", id="keys-file-missing"),
    pytest.param(_keys_file("bad_keys"), "api-keys-unloadable", "critical",
                 "auth.api_keys_file", id="keys-file-invalid"),
    pytest.param(_keys_file("expired_keys"), "api-key-expired", "warning",
                 "auth.api_keys_file", id="key-expired"),
    pytest.param(_fixed({"cors": {"allow_origins": ["https://app.example.com", "*"]}}),
                 "cors-wildcard-origin", "warning", "cors.allow_origins", id="cors-wildcard"),
    pytest.param(_fixed({"cors": {"allow_origin_regex": r"https://.*\.example\.com"}}),
                 "cors-permissive-regex", "warning", "cors.allow_origin_regex",
                 id="cors-regex-dot-star"),
    pytest.param(_fixed({"cors": {"allow_origin_regex": r"https://app.+"}}),
                 "cors-permissive-regex", "warning", "cors.allow_origin_regex",
                 id="cors-regex-dot-plus"),
    pytest.param(_fixed({"cors": {"allow_origin_regex": r"https://[a-z0-9-]+.example.com"}}),
                 "cors-permissive-regex", "warning", "cors.allow_origin_regex",
                 id="cors-regex-unescaped-dot"),
    pytest.param(_fixed({"server": {"trusted_proxies": ["*"]}}),
                 "trusted-proxies-any", "critical", "server.trusted_proxies", id="proxies-star"),
    pytest.param(_fixed({"server": {"trusted_proxies": ["10.0.0.10", "0.0.0.0/0"]}}),
                 "trusted-proxies-any", "critical", "server.trusted_proxies", id="proxies-v4-any"),
    pytest.param(_fixed({"server": {"trusted_proxies": ["::/0"]}}),
                 "trusted-proxies-any", "critical", "server.trusted_proxies", id="proxies-v6-any"),
    pytest.param(_fixed({"rate_limit": {"enabled": False}}),
                 "rate-limit-disabled", "warning", "rate_limit.enabled", id="rate-limit-off"),
    pytest.param(_fixed({"env": DEV, "auth": {"enabled": False},
                         "server": {"trusted_proxies": []}}),
                 "ip-limits-without-proxies", "warning", "server.trusted_proxies",
                 id="ip-limits-auth-off"),
    pytest.param(_fixed({**PUBLIC_METRICS, "server": {"trusted_proxies": []}}),
                 "ip-limits-without-proxies", "warning", "server.trusted_proxies",
                 id="ip-limits-public-metrics"),
    pytest.param(_fixed({"rate_limit": {"storage_uri": "memory://"}}),
                 "rate-limit-memory-multiworker", "warning", "rate_limit.storage_uri",
                 id="memory-storage-workers"),
    pytest.param(_fixed({"rate_limit": {"on_storage_error": "open"}}),
                 "rate-limit-fail-open", "warning", "rate_limit.on_storage_error", id="fail-open"),
    pytest.param(_fixed({"rate_limit": {"runs_on_storage_error": "open"}}),
                 "rate-limit-fail-open", "warning", "rate_limit.runs_on_storage_error",
                 id="runs-fail-open"),
    pytest.param(_fixed({"rate_limit": {"max_concurrent_streams": 0}}),
                 "streams-uncapped", "warning", "rate_limit.max_concurrent_streams",
                 id="streams-uncapped"),
    pytest.param(_fixed(PUBLIC_METRICS),
                 "metrics-public", "warning", "metrics.token", id="metrics-public"),
    pytest.param(_fixed({"http": {"hsts_max_age_s": 0}}),
                 "hsts-off", "warning", "http.hsts_max_age_s", id="hsts-off"),
    pytest.param(_fixed({"http": {"security_headers": False}}),
                 "security-headers-off", "warning", "http.security_headers",
                 id="security-headers-off"),
    pytest.param(_fixed({"env": DEV, "database_url": "memory:"}),
                 "database-memory", "warning", "database_url", id="database-memory"),
    pytest.param(_fixed({"limits": {"max_body_bytes": 20 * 1024 * 1024}}),
                 "body-limit-large", "warning", "limits.max_body_bytes", id="large-body"),
]


@pytest.mark.parametrize(("changes", "code", "severity", "setting"), WEAK_CASES)
def test_weak_setting_is_reported_and_fails_strict(
    secure: Secure,
    weak_files: dict[str, Path],
    changes: Changes,
    code: str,
    severity: str,
    setting: str,
) -> None:
    """Each weak setting yields its finding, and `--strict` exits non-zero (text and json)."""
    settings = secure(**changes(weak_files))
    found = findings(settings)
    assert (code, severity, setting) in codes(found)
    assert exit_code(found, strict=True) == 1
    if severity == "critical":
        assert exit_code(found, strict=False) == 1
    for fmt in ("text", "json"):
        assert output_of(settings, fmt, strict=True)[0] == 1
    text = output_of(settings, "text")[1]
    assert f"{severity.upper()}" in text and code in text and setting in text
    document = json.loads(output_of(settings, "json")[1])
    assert {"severity": severity, "code": code, "setting": setting} in [
        {k: f[k] for k in ("severity", "code", "setting")} for f in document["findings"]
    ]
    assert all(f.message and "\n" not in f.message for f in found)


def test_warnings_alone_pass_without_strict(secure: Secure) -> None:
    """Warnings alone exit 0 without --strict."""
    found = findings(secure(**PUBLIC_METRICS, rate_limit={"max_concurrent_streams": 0}))
    assert {f.severity for f in found} == {"warning"}
    assert exit_code(found, strict=False) == 0


@pytest.mark.parametrize(
    ("changes", "code", "setting"),
    [
        ({"auth": {"jwt": {"max_token_age_s": None}}}, "jwt-no-max-age",
         "auth.jwt.max_token_age_s"),
        ({"auth": {"jwt": {"token_types": []}}}, "jwt-any-token-type", "auth.jwt.token_types"),
        ({"http": {"allowed_hosts": []}}, "allowed-hosts-empty", "http.allowed_hosts"),
        ({"rate_limit": {"storage_uri": "memory://", "on_storage_error": "open"},
          "server": {"workers": 1}}, "rate-limit-fail-open", "rate_limit.on_storage_error"),
    ],
)
def test_info_findings_do_not_fail_strict(
    secure: Secure, changes: dict[str, Any], code: str, setting: str
) -> None:
    """Informational findings are reported but `--strict` still exits 0."""
    found = findings(secure(**changes))
    assert (code, "info", setting) in codes(found)
    assert exit_code(found, strict=True) == 0


def test_key_scope_and_expiry_notes_list_key_ids(secure: Secure, tmp_path: Path) -> None:
    """Keys with scope '*' and keys without expiry are info findings naming their ids."""
    path, _ = write_keys(
        tmp_path / "k.toml",
        [
            {"id": "admin", "scopes": ["*"], "expires_at": FUTURE},
            {"id": "forever", "scopes": ["threads:read"]},
            {"id": "fine", "scopes": ["threads:read"], "expires_at": FUTURE},
        ],
    )
    found = {f.code: f for f in findings(secure(auth={"api_keys_file": path}))}
    assert found["api-key-wildcard-scope"].severity == "info"
    assert "admin" in found["api-key-wildcard-scope"].message
    assert "fine" not in found["api-key-wildcard-scope"].message
    assert found["api-key-no-expiry"].severity == "info"
    assert "forever" in found["api-key-no-expiry"].message
    assert "admin" not in found["api-key-no-expiry"].message
    assert "api-key-expired" not in found


def test_hsts_off_is_info_in_development(secure: Secure) -> None:
    """Without HSTS, development gets an info note; production a warning (above)."""
    found = findings(secure(env="development", http={"hsts_max_age_s": 0}))
    assert ("hsts-off", "info", "http.hsts_max_age_s") in codes(found)


def test_memory_storage_with_one_worker_is_fine(secure: Secure) -> None:
    """memory:// limits are exact with a single worker."""
    found = findings(secure(server={"workers": 1}, rate_limit={"storage_uri": "memory://"}))
    assert "rate-limit-memory-multiworker" not in {f.code for f in found}


def test_ip_limits_need_no_proxies_when_nothing_is_anonymous(secure: Secure) -> None:
    """With auth on and /metrics off the main port, empty trusted_proxies is not a finding."""
    found = findings(secure(server={"trusted_proxies": []}))
    assert "ip-limits-without-proxies" not in {f.code for f in found}


@pytest.mark.parametrize(
    "regex",
    [r"https://[a-z0-9-]+\.example\.com", r"https://app\.example\.com", r"https://x[.]*",
     r"https://a\.+b", r"https://[^.]+\.example\.com", r"https://[^].]+\.example\.com",
     r"https://(app|admin)\.example\.com(:[0-9]+)?"],
)
def test_tight_cors_regex_is_not_reported(secure: Secure, regex: str) -> None:
    """Escaped dots, dots in character classes and label patterns are fine."""
    found = findings(secure(cors={"allow_origin_regex": regex}))
    assert "cors-permissive-regex" not in {f.code for f in found}


@pytest.mark.parametrize(
    "regex",
    [r"https://[a-z0-9-]+.example.com", r"https://app\.example.com", r"https://[.]x.y",
     r"https://[^]]+.example\.com"],
)
def test_unescaped_dot_in_cors_regex_is_reported(secure: Secure, regex: str) -> None:
    """Any `.` outside a class matches any character, e.g. a `-` in an attacker's host."""
    found = [f for f in findings(secure(cors={"allow_origin_regex": regex}))
             if f.code == "cors-permissive-regex"]
    assert [(f.severity, f.setting) for f in found] == [("warning", "cors.allow_origin_regex")]
    assert "unescaped `.`" in found[0].message


def test_unescaped_dot_really_lets_a_lookalike_host_in() -> None:
    """Why the finding exists: the pattern admits a host that is not a subdomain."""
    assert re.fullmatch(r"https://[a-z0-9-]+.example.com", "https://attacker-example.com")
    assert not re.fullmatch(r"https://[a-z0-9-]+\.example\.com", "https://attacker-example.com")


@pytest.mark.parametrize(("algorithm", "length", "weak"), [
    ("HS256", 32, False), ("HS384", 47, True), ("HS384", 48, False),
    ("HS512", 63, True), ("HS512", 64, False),
])
def test_secret_file_must_be_as_long_as_the_hash(
    secure: Secure, tmp_path: Path, algorithm: str, length: int, weak: bool
) -> None:
    """RFC 7518 3.2: an HS384/HS512 key of fewer than 48/64 bytes is critical."""
    secret = (JWT_SECRET * 2)[:length]
    path = tmp_path / "secret.key"
    path.write_text(secret + "\n", encoding="utf-8")
    settings = secure(auth={"jwt": {
        "jwks_url": None, "algorithms": [algorithm], "secret_file": path}})
    found = [f for f in findings(settings) if f.code == "jwt-weak-secret"]
    if weak:
        assert [(f.severity, f.setting) for f in found] == [
            ("critical", "auth.jwt.secret_file")]
        assert f"shorter than {length + 1} bytes" in found[0].message
        assert algorithm in found[0].message
        assert secret not in found[0].message
    else:
        assert found == []


@pytest.mark.parametrize(("algorithm", "length", "weak"), [
    ("HS384", 47, True), ("HS384", 48, False), ("HS512", 63, True), ("HS512", 64, False),
])
def test_inline_secret_must_be_as_long_as_the_hash(
    secure: Secure, algorithm: str, length: int, weak: bool
) -> None:
    """The same rule for `secret` (refused at load, so built past validation here)."""
    secret = (JWT_SECRET * 2)[:length]
    base = secure(env="development", auth={"jwt": {
        "jwks_url": None, "algorithms": ["HS256"], "secret": JWT_SECRET}})
    jwt = base.auth.jwt.model_copy(
        update={"algorithms": [algorithm], "secret": SecretStr(secret)})
    settings = base.model_copy(update={"auth": base.auth.model_copy(update={"jwt": jwt})})
    found = codes(findings(settings))
    assert (("jwt-weak-secret", "critical", "auth.jwt.secret") in found) == weak
    for fmt in ("text", "json"):
        assert secret not in output_of(settings, fmt)[1]


def test_checks_refused_by_settings_still_report(secure: Secure) -> None:
    """A weak inline secret or `*` with credentials (refused at load) is still critical."""
    base = secure(env="development", auth={"jwt": {
        "jwks_url": None, "algorithms": ["HS256"], "secret": JWT_SECRET}})
    jwt = base.auth.jwt.model_copy(update={"secret": SecretStr("Weak-Pw-9")})
    cors = base.cors.model_copy(update={"allow_origins": ["*"], "allow_credentials": True})
    weak = base.model_copy(update={"auth": base.auth.model_copy(update={"jwt": jwt}),
                                   "cors": cors})
    found = codes(findings(weak))
    assert ("jwt-weak-secret", "critical", "auth.jwt.secret") in found
    assert ("cors-wildcard-origin", "critical", "cors.allow_origins") in found
    for fmt in ("text", "json"):
        assert "Weak-Pw-9" not in output_of(weak, fmt)[1]


def test_findings_are_ordered_by_severity(secure: Secure) -> None:
    """Critical first, then warnings, then info."""
    found = findings(secure(env="development", auth={"enabled": False},
                            http={"allowed_hosts": []}))
    order = {"critical": 0, "warning": 1, "info": 2}
    assert [order[f.severity] for f in found] == sorted(order[f.severity] for f in found)


# --- exit codes and rendering -------------------------------------------------------------


@pytest.mark.parametrize(
    ("severities", "strict", "expected"),
    [
        ([], False, 0), ([], True, 0),
        (["info"], False, 0), (["info"], True, 0),
        (["warning", "info"], False, 0), (["warning"], True, 1),
        (["critical"], False, 1), (["critical"], True, 1),
    ],
)
def test_exit_code(severities: list[Any], strict: bool, expected: int) -> None:
    """1 on any critical; with strict also on any warning; else 0."""
    found = [Finding(s, "c", "x", "m") for s in severities]
    assert exit_code(found, strict) == expected


def test_render_json_shape(secure: Secure) -> None:
    """JSON output has posture, findings and a summary whose counts match."""
    settings = secure(**PUBLIC_METRICS, http={"allowed_hosts": []})
    found = findings(settings)
    document = json.loads(render_json(posture(settings), found))
    assert set(document) == {"posture", "findings", "summary"}
    assert document["summary"] == {
        s: sum(f.severity == s for f in found) for s in ("critical", "warning", "info")
    }
    assert document["findings"][0] == {
        "severity": "warning", "code": "metrics-public", "setting": "metrics.token",
        "message": found[0].message,
    }


def test_render_text_lists_posture_and_findings(secure: Secure) -> None:
    """Text output shows the key settings, each finding and a summary line."""
    settings = secure(**PUBLIC_METRICS)
    text = render_text(posture(settings), findings(settings))
    assert "methods: api_key, jwt" in text
    assert "id=ci-bot, tenant=acme" in text
    assert "scopes=runs:create threads:read" in text
    assert "trusted_proxies: 10.0.0.10" in text
    assert "address: redis.internal:6379" in text
    assert "public_paths: /healthz, /readyz, /ok, /metrics" in text
    assert "WARNING  metrics-public (metrics.token):" in text
    assert "metrics.port / metrics.token" in text
    assert text.rstrip().endswith("0 critical, 1 warning, 0 info")


def test_unknown_format_is_an_error(secure: Secure) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        run_check_config(secure(), fmt="yaml", strict=False, out=io.StringIO())


# --- secrets never leak ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_in_settings_never_appear(secure: Secure, fmt: str) -> None:
    """JWT secret, redis password and postgres password stay out of both formats."""
    settings = secure(
        env="development",
        database_url=f"postgresql://graphgate:{PG_PASSWORD}@db.internal:5433/graphgate",
        auth={"jwt": {"jwks_url": None, "algorithms": ["HS256"], "secret": JWT_SECRET}},
        rate_limit={"storage_uri": f"redis://app:{REDIS_PASSWORD}@redis.internal:6380/0"},
    )
    _, text = output_of(settings, fmt)
    for secret in (JWT_SECRET, REDIS_PASSWORD, PG_PASSWORD):
        assert secret not in text
    assert "redis.internal:6380" in text
    assert "db.internal:5433" in text


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_file_contents_never_appear(secure: Secure, tmp_path: Path, fmt: str) -> None:
    """The secret file is named by path; neither a strong nor a weak secret is printed."""
    for name, content in (("strong.key", JWT_SECRET), ("weak.key", "Weak-Pw-9")):
        path = tmp_path / name
        path.write_text(content + "\n", encoding="utf-8")
        settings = secure(auth={"jwt": {
            "jwks_url": None, "algorithms": ["HS256"], "secret_file": path}})
        _, text = output_of(settings, fmt)
        assert content not in text
        assert str(path) in text


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_jwks_url_credentials_never_appear(secure: Secure, fmt: str) -> None:
    """Userinfo or a query in the JWKS URL is not printed; host and path are."""
    settings = secure(auth={"jwt": {
        "jwks_url": f"https://svc:{PG_PASSWORD}@idp.example.com/jwks?token={REDIS_PASSWORD}"}})
    _, text = output_of(settings, fmt)
    assert PG_PASSWORD not in text and REDIS_PASSWORD not in text
    assert "https://idp.example.com/jwks" in text


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("port", [None, 9464])
def test_metrics_token_never_appears(secure: Secure, fmt: str, port: int | None) -> None:
    """The metrics token is shown as set (true / yes), never as its value."""
    settings = secure(metrics={"token": METRICS_TOKEN, "port": port})
    code, text = output_of(settings, fmt)
    assert code == 0
    assert METRICS_TOKEN not in text
    if fmt == "json":
        assert json.loads(text)["posture"]["metrics"]["token"] is True
    else:
        assert "    token: yes" in text


@pytest.mark.parametrize(("endpoint", "shown"), [
    ("http://otel-collector:4318/v1/traces", "http://otel-collector:4318/v1/traces"),
    (f"https://svc:{PG_PASSWORD}@otel.example.com/v1/traces?api-key={REDIS_PASSWORD}",
     "https://otel.example.com/v1/traces?…"),
    (f"https://{PG_PASSWORD}@otel.example.com:4318/v1/traces#{REDIS_PASSWORD}",
     "https://otel.example.com:4318/v1/traces"),
    (f"https://svc:{PG_PASSWORD[:3]}/{PG_PASSWORD[3:]}@otel.example.com/v1/traces",
     "https://?"),
    (f"svc:{PG_PASSWORD}@otel.example.com:4318", "(not a scheme://host URL)"),
])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_telemetry_endpoint_is_shown_without_credentials(
    secure: Secure, fmt: str, endpoint: str, shown: str
) -> None:
    """The OTLP endpoint is shown as scheme://host:port/path; userinfo and query are not."""
    settings = secure(telemetry={"otlp_endpoint": endpoint})
    assert posture(settings)["telemetry"] == {"otlp_endpoint": shown}
    _, text = output_of(settings, fmt)
    assert PG_PASSWORD not in text and PG_PASSWORD[3:] not in text
    assert REDIS_PASSWORD not in text
    if fmt == "json":
        assert json.loads(text)["posture"]["telemetry"]["otlp_endpoint"] == shown
    else:
        assert f"otlp_endpoint: {shown}" in text


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_key_hashes_never_appear(secure: Secure, tmp_path: Path, fmt: str) -> None:
    """Key ids, tenants and scopes are listed; their hashes never are."""
    path, hashes = write_keys(
        tmp_path / "k.toml",
        [{"id": "one", "tenant": "t1", "expires_at": FUTURE},
         {"id": "two", "tenant": "t2", "scopes": ["*"]}],
    )
    _, text = output_of(secure(auth={"api_keys_file": path}), fmt)
    assert "one" in text and "t2" in text
    for digest in hashes:
        assert digest.removeprefix("sha256:") not in text
    assert "sha256:" not in text


def test_keys_file_with_the_removed_metrics_scope_is_critical(
    secure: Secure, tmp_path: Path
) -> None:
    """metrics:read is gone (/metrics has its own token), so a key still listing it is refused."""
    path, _ = write_keys(tmp_path / "k.toml",
                         [{"id": "scraper", "scopes": ["metrics:read"], "expires_at": FUTURE}])
    found = [f for f in findings(secure(auth={"api_keys_file": path}))
             if f.code == "api-keys-unloadable"]
    assert [f.severity for f in found] == ["critical"]
    assert "unknown scope 'metrics:read'" in found[0].message


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_unloadable_keys_file_error_shows_no_hash(
    secure: Secure, tmp_path: Path, fmt: str
) -> None:
    """A keys file refused at load is reported without echoing any entry's hash."""
    path, hashes = write_keys(tmp_path / "k.toml", [{"id": "one", "scopes": ["bogus:scope"]}])
    code, text = output_of(secure(auth={"api_keys_file": path}), fmt, strict=False)
    assert code == 1
    assert "api-keys-unloadable" in text
    assert hashes[0].removeprefix("sha256:") not in text
