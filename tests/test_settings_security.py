"""The security settings: [auth], [auth.jwt], [rate_limit], [cors], [server] trusted_proxies,
[metrics], and production's refusal to run without authentication."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.settings import ConfigError, Settings, load_settings, public_view

# Random-looking, 40 bytes, many distinct characters: passes the HMAC strength check.
STRONG_SECRET = "q7Vx2Lm9Rt4Wz8Nb3Hc6Jd1Fg5Ys0Kp-Ta_Ue7Mw"
METRICS_TOKEN = "Pm3Xw8Qz1Rv6Ty0Us4Lk9Jh2Gf7Dn5Bc-Ae_Io"
ISSUER = "https://login.example.com/"
AUDIENCE = "https://api.example.com"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    """An API keys file with no keys yet, which is valid: enough for production to start."""
    path = tmp_path / "keys.toml"
    path.write_text("", encoding="utf-8")
    return path


def development(**overrides: Any) -> Settings:
    """Settings in development, where production's auth requirement is not the point."""
    return load_settings(env="development", **overrides)


def refusal(**overrides: Any) -> str:
    """The one-line ConfigError message that loading these settings raises."""
    with pytest.raises(ConfigError) as excinfo:
        load_settings(**overrides)
    message = str(excinfo.value)
    assert "\n" not in message
    assert excinfo.value.__cause__ is None  # no chained exception carries the input
    return message


def hmac_jwt(**jwt: Any) -> dict[str, Any]:
    """An [auth] section with a valid HMAC JWT set-up, plus `jwt` overrides."""
    return {"jwt": {"algorithms": ["HS256"], "secret": STRONG_SECRET, "issuer": ISSUER,
                    "audience": AUDIENCE, **jwt}}


# --- [auth.jwt] algorithms ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["none", "None", "HS256,none", "RS256, none"])
def test_none_algorithm_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """`none` (unsigned tokens) is not an algorithm the setting can hold."""
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__ALGORITHMS", value)
    with pytest.raises(ConfigError) as excinfo:
        development()
    message = str(excinfo.value)
    assert "invalid setting auth.jwt.algorithms." in message
    # The variable is named without the list position.
    assert "(GRAPHGATE_AUTH__JWT__ALGORITHMS)" in message
    assert "ALGORITHMS__" not in message


def test_hmac_secret_must_match_the_hash_length() -> None:
    """RFC 7518 3.2: an HS512 key is at least 64 bytes."""
    message = refusal(env="development",
                      auth={"jwt": {"secret": STRONG_SECRET, "algorithms": ["HS512"]}})
    assert "at least 64 bytes" in message and STRONG_SECRET not in message
    long_secret = STRONG_SECRET * 2
    assert load_settings(env="development", auth={"jwt": {
        "secret": long_secret, "algorithms": ["HS512"]}}).auth.jwt.enabled


@pytest.mark.parametrize("algorithms", [["HS256", "RS256"], ["ES256", "HS512"]])
def test_hmac_and_asymmetric_algorithms_are_never_mixed(algorithms: list[str]) -> None:
    """Mixing HS* with RS*/ES* would allow algorithm confusion, so it is refused."""
    message = refusal(env="development", auth={"jwt": {"algorithms": algorithms}})
    assert "invalid setting auth.jwt.algorithms (GRAPHGATE_AUTH__JWT__ALGORITHMS)" in message
    assert "must not mix HMAC (HS*) and asymmetric (RS*/ES*)" in message


def test_algorithms_may_not_be_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__ALGORITHMS", "")
    with pytest.raises(ConfigError, match="must list at least one algorithm"):
        development()


def test_algorithms_default_to_rs256() -> None:
    assert development().auth.jwt.algorithms == ["RS256"]


# --- [auth.jwt] key sources --------------------------------------------------------------


def test_only_one_key_source_is_allowed() -> None:
    """Two key sources would leave it unclear which keys verify tokens."""
    message = refusal(env="development", auth={"jwt": {
        "algorithms": ["HS256"], "secret": STRONG_SECRET, "secret_file": "/run/jwt.key"}})
    assert "invalid setting auth.jwt (GRAPHGATE_AUTH__JWT)" in message
    assert "set only one JWT key source, not secret and secret_file" in message
    assert STRONG_SECRET not in message


def test_two_asymmetric_key_sources_are_refused() -> None:
    message = refusal(env="development", auth={"jwt": {
        "public_key_file": "/etc/jwt.pem", "jwks_url": "https://login.example.com/jwks"}})
    assert "set only one JWT key source, not public_key_file and jwks_url" in message


@pytest.mark.parametrize(("source", "value", "algorithms", "needs"), [
    ("secret", STRONG_SECRET, ["RS256"], "HS*"),
    ("secret_file", "/run/jwt.key", ["ES256"], "HS*"),
    ("public_key_file", "/etc/jwt.pem", ["HS256"], "RS*/ES*"),
    ("jwks_file", "/etc/jwks.json", ["HS384"], "RS*/ES*"),
    ("jwks_url", "https://login.example.com/jwks", ["HS512"], "RS*/ES*"),
])
def test_key_source_must_match_the_algorithm_family(
    source: str, value: str, algorithms: list[str], needs: str
) -> None:
    """An HMAC secret needs HS*; public keys and JWKS need RS*/ES*."""
    message = refusal(env="development",
                      auth={"jwt": {source: value, "algorithms": algorithms}})
    assert "invalid setting auth.jwt (GRAPHGATE_AUTH__JWT)" in message
    assert f"{source} needs {needs} algorithms" in message
    assert STRONG_SECRET not in message


@pytest.mark.parametrize(("source", "value", "algorithms"), [
    ("secret", STRONG_SECRET, ["HS256"]),
    ("secret_file", "/run/jwt.key", ["HS384"]),
    ("public_key_file", "/etc/jwt.pem", ["RS256", "RS512"]),
    ("jwks_file", "/etc/jwks.json", ["ES256"]),
    ("jwks_url", "https://login.example.com/jwks", ["RS256", "ES384"]),
])
def test_matching_key_source_enables_jwt(source: str, value: str, algorithms: list[str]) -> None:
    jwt = development(auth={"jwt": {source: value, "algorithms": algorithms}}).auth.jwt
    assert jwt.enabled
    assert jwt.key_sources == [source]


def test_jwt_is_off_without_a_key_source() -> None:
    auth = development().auth
    assert not auth.jwt.enabled
    assert auth.methods == []


# --- [auth.jwt] secret strength ------------------------------------------------------------


@pytest.mark.parametrize(("secret", "reason"), [
    ("Sh0rt-but-random!", "is shorter than 32 bytes"),
    ("ab" * 20, "does not look random (too few distinct characters)"),
    ("1234512345" * 4, "does not look random (too few distinct characters)"),
    ("a" * 64, "does not look random (too few distinct characters)"),
])
@pytest.mark.parametrize("env", ["development", "production"])
def test_weak_secret_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, keys_file: Path, env: str, secret: str, reason: str
) -> None:
    """A guessable HMAC secret is refused in every env; the error never shows it."""
    monkeypatch.setenv("GRAPHGATE_ENV", env)
    monkeypatch.setenv("GRAPHGATE_AUTH__API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__ALGORITHMS", "HS256")
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__SECRET", secret)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert message == f"invalid setting auth.jwt.secret (GRAPHGATE_AUTH__JWT__SECRET): {reason}"
    assert secret not in message
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_strong_secret_is_accepted_and_masked() -> None:
    settings = load_settings(auth=hmac_jwt())
    jwt = settings.auth.jwt
    assert jwt.secret is not None and jwt.secret.get_secret_value() == STRONG_SECRET
    assert STRONG_SECRET not in repr(settings)
    view = public_view(settings)
    assert STRONG_SECRET not in repr(view)
    assert view["auth"]["jwt"]["secret"] == "**********"


# --- [auth.jwt] jwks_url -------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://login.example.com/.well-known/jwks.json",
    "https://login.example.com:8443/jwks",
    "http://127.0.0.1:8080/jwks",
    "http://localhost/jwks",
    "http://[::1]:9000/jwks",
])
def test_jwks_url_https_or_loopback_http_is_accepted(url: str) -> None:
    assert development(auth={"jwt": {"jwks_url": url}}).auth.jwt.jwks_url == url


@pytest.mark.parametrize("url", [
    "http://login.example.com/jwks",  # keys over plain HTTP can be swapped in transit
    "http://localhost.attacker.example/jwks",
    "http://10.0.0.5/jwks",
    "ftp://login.example.com/jwks",
    "file:///etc/jwks.json",
    "login.example.com/jwks",
    "https:///jwks",
])
def test_jwks_url_other_schemes_and_remote_http_are_refused(url: str) -> None:
    message = refusal(env="development", auth={"jwt": {"jwks_url": url}})
    assert "invalid setting auth.jwt.jwks_url (GRAPHGATE_AUTH__JWT__JWKS_URL)" in message
    assert "must be an https:// URL (http:// only on loopback)" in message


def test_jwks_url_error_does_not_echo_the_url() -> None:
    message = refusal(env="development",
                      auth={"jwt": {"jwks_url": "http://user:Pa55word@idp.example/jwks"}})
    assert "Pa55word" not in message
    assert "idp.example" not in message


# --- [cors] ----------------------------------------------------------------------------------


def test_null_origin_is_refused() -> None:
    """Sandboxed iframes and file:// pages send Origin: null; listing it trusts them all."""
    message = refusal(env="development",
                      cors={"allow_origins": ["https://app.example.com", "null"]})
    assert "invalid setting cors.allow_origins (GRAPHGATE_CORS__ALLOW_ORIGINS)" in message
    assert "must not contain 'null'" in message


@pytest.mark.parametrize("env", ["development", "production"])
def test_wildcard_origin_with_credentials_is_refused_in_any_env(
    keys_file: Path, env: str
) -> None:
    message = refusal(env=env, auth={"api_keys_file": keys_file},
                      cors={"allow_origins": ["*"], "allow_credentials": True})
    assert message == (
        "invalid setting cors (GRAPHGATE_CORS): allow_origins '*' cannot be combined with "
        "allow_credentials"
    )


def test_wildcard_origin_without_credentials_is_allowed() -> None:
    """Allowed (check-config warns about it); only the credentials combination is refused."""
    cors = development(cors={"allow_origins": ["*"]}).cors
    assert cors.allow_origins == ["*"] and cors.enabled and not cors.allow_credentials


@pytest.mark.parametrize("origin", [
    "app.example.com",
    "https://app.example.com/",
    "https://app.example.com/path",
    "ftp://app.example.com",
    "https://app.example.com:123456",
    "https://*.example.com",
    "https://app.example.com,https://b.example.com",
])
def test_malformed_origin_is_refused(origin: str) -> None:
    message = refusal(env="development", cors={"allow_origins": [origin]})
    assert "invalid setting cors.allow_origins (GRAPHGATE_CORS__ALLOW_ORIGINS)" in message
    assert "is not an origin like https://app.example.com" in message


def test_exact_origins_are_accepted() -> None:
    origins = ["https://app.example.com", "http://localhost:3000", "https://[::1]:8443"]
    assert development(cors={"allow_origins": origins}).cors.allow_origins == origins


def test_bad_origin_regex_is_refused() -> None:
    message = refusal(env="development", cors={"allow_origin_regex": "https://(app|admin"})
    assert "invalid setting cors.allow_origin_regex (GRAPHGATE_CORS__ALLOW_ORIGIN_REGEX)" in message
    assert "is not a valid regex" in message


def test_origin_regex_is_accepted() -> None:
    regex = r"https://[a-z0-9-]+\.example\.com"
    cors = development(cors={"allow_origin_regex": regex}).cors
    assert cors.allow_origin_regex == regex and cors.enabled


def test_cors_is_off_by_default() -> None:
    cors = development().cors
    assert not cors.enabled and cors.allow_origins == [] and not cors.allow_credentials


# --- [rate_limit] ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["default_limits", "anonymous_limits", "run_limits"])
@pytest.mark.parametrize("value", ["10/minute", "10/minute;100/hour", "5 per second"])
def test_rate_limit_strings_are_accepted(field: str, value: str) -> None:
    assert getattr(development(rate_limit={field: value}).rate_limit, field) == value


@pytest.mark.parametrize("field", ["default_limits", "anonymous_limits", "run_limits"])
@pytest.mark.parametrize("value", ["lots", "", "10/fortnight", "10/minute;", "minute/10"])
def test_rate_limit_strings_are_validated(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    env_name = f"GRAPHGATE_RATE_LIMIT__{field.upper()}"
    monkeypatch.setenv(env_name, value)
    with pytest.raises(ConfigError) as excinfo:
        development()
    message = str(excinfo.value)
    assert f"invalid setting rate_limit.{field} ({env_name})" in message
    assert "is not a rate limit like '60/minute;1000/hour'" in message


@pytest.mark.parametrize(("uri", "shared"), [
    ("memory://", False),
    ("redis://localhost:6379/0", True),
    ("rediss://:Pa55word@redis.internal:6380/1", True),
    ("redis+unix:///run/redis/redis.sock", True),
])
def test_storage_uri_schemes_are_accepted(uri: str, shared: bool) -> None:
    settings = development(rate_limit={"storage_uri": uri})
    assert settings.rate_limit.storage_uri.get_secret_value() == uri
    assert settings.rate_limit.shared is shared
    assert "Pa55word" not in repr(public_view(settings))


@pytest.mark.parametrize("uri", [
    "mysql://app:Pa55word@db.internal/limits",
    "memcached://app:Pa55word@cache.internal:11211",
    "http://app:Pa55word@redis.internal",
    "Pa55word",
])
def test_storage_uri_scheme_is_validated_without_echoing_it(uri: str) -> None:
    message = refusal(env="development", rate_limit={"storage_uri": uri})
    assert message == (
        "invalid setting rate_limit.storage_uri (GRAPHGATE_RATE_LIMIT__STORAGE_URI): "
        "must be memory:// or redis://…"
    )
    assert "Pa55word" not in message and "internal" not in message


@pytest.mark.parametrize("uri", ["memory", "redis"])
def test_storage_uri_without_scheme_separator_is_refused(uri: str) -> None:
    refusal(env="development", rate_limit={"storage_uri": uri})


# --- [server] trusted_proxies ------------------------------------------------------------------


def test_trusted_proxies_accept_addresses_networks_and_wildcard() -> None:
    proxies = ["10.0.0.1", "10.1.0.0/16", "::1", "fd00::/8", "192.168.1.7/24", "*"]
    assert development(server={"trusted_proxies": proxies}).server.trusted_proxies == proxies


@pytest.mark.parametrize("entry", [
    "proxy.internal", "10.0.0.0/33", "10.0.0.256", "10.0.0.1/abc", "", "any",
])
def test_trusted_proxies_refuse_anything_else(entry: str) -> None:
    message = refusal(env="development", server={"trusted_proxies": ["10.0.0.1", entry]})
    assert "invalid setting server.trusted_proxies (GRAPHGATE_SERVER__TRUSTED_PROXIES)" in message
    assert "is not an IP address or network" in message


def test_trusted_proxies_default_to_loopback() -> None:
    assert development().server.trusted_proxies == ["127.0.0.1", "::1"]


def test_empty_trusted_proxies_env_trusts_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHGATE_SERVER__TRUSTED_PROXIES", "")
    assert development().server.trusted_proxies == []


# --- environment variable forms ---------------------------------------------------------------


def test_list_settings_from_comma_separated_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHGATE_CORS__ALLOW_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__ALGORITHMS", "ES256,ES384")
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__JWKS_URL", "https://login.example.com/jwks")
    monkeypatch.setenv("GRAPHGATE_SERVER__TRUSTED_PROXIES", "10.0.0.1,10.1.0.0/16")
    monkeypatch.setenv("GRAPHGATE_HTTP__ALLOWED_HOSTS", " api.example.com , *.example.com ")
    settings = development()
    assert settings.cors.allow_origins == ["https://a.example", "https://b.example"]
    assert settings.auth.jwt.algorithms == ["ES256", "ES384"]
    assert settings.server.trusted_proxies == ["10.0.0.1", "10.1.0.0/16"]
    assert settings.http.allowed_hosts == ["api.example.com", "*.example.com"]


def test_list_settings_from_json_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHGATE_CORS__ALLOW_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__TOKEN_TYPES", '["at+jwt"]')
    settings = development()
    assert settings.cors.allow_origins == ["https://a.example"]
    assert settings.auth.jwt.token_types == ["at+jwt"]


def test_nested_env_vars_fill_the_jwt_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRAPHGATE_AUTH__JWT__<KEY> sets [auth.jwt]; together they satisfy production."""
    for key, value in {"ALGORITHMS": "HS256", "SECRET": STRONG_SECRET, "ISSUER": ISSUER,
                       "AUDIENCE": AUDIENCE, "LEEWAY_S": "10"}.items():
        monkeypatch.setenv(f"GRAPHGATE_AUTH__JWT__{key}", value)
    settings = load_settings()
    assert settings.env == "production"
    assert settings.auth.methods == ["jwt"]
    assert (settings.auth.jwt.issuer, settings.auth.jwt.audience) == (ISSUER, AUDIENCE)
    assert settings.auth.jwt.leeway_s == 10


def test_invalid_nested_env_var_is_named_with_its_full_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__LEEWAY_S", "600")
    with pytest.raises(ConfigError) as excinfo:
        development()
    assert "invalid setting auth.jwt.leeway_s (GRAPHGATE_AUTH__JWT__LEEWAY_S)" in str(excinfo.value)


def test_unknown_nested_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a nested section stops start-up like one in a top-level section."""
    monkeypatch.setenv("GRAPHGATE_AUTH__JWT__ISSUR", ISSUER)
    with pytest.raises(ConfigError, match=r"auth\.jwt\.issur"):
        development()


# --- [metrics] -------------------------------------------------------------------------------


def test_metrics_defaults_serve_it_publicly_on_the_main_port() -> None:
    """Enabled, no token, no extra port: readable by anyone reaching the main port."""
    metrics = development().metrics
    assert metrics.enabled
    assert metrics.token is None and metrics.port is None and metrics.multiprocess_dir is None
    assert metrics.public


@pytest.mark.parametrize(("metrics", "public"), [
    ({"token": METRICS_TOKEN}, False),
    ({"port": 9464}, False),
    ({"token": METRICS_TOKEN, "port": 9464}, False),
    ({"enabled": False}, False),
    ({"enabled": True}, True),
])
def test_metrics_is_public_only_without_token_and_port(
    metrics: dict[str, Any], public: bool
) -> None:
    assert development(metrics=metrics).metrics.public is public


def test_metrics_public_is_no_longer_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`public` is derived (enabled, no token, no port); setting it is an unknown key."""
    monkeypatch.setenv("GRAPHGATE_METRICS__PUBLIC", "false")
    with pytest.raises(ConfigError, match=r"metrics\.public \(GRAPHGATE_METRICS__PUBLIC\)"):
        development()


@pytest.mark.parametrize(("token", "reason"), [
    ("Sh0rt-but-random!", "is shorter than 32 bytes"),
    ("ab" * 20, "does not look random (too few distinct characters)"),
])
@pytest.mark.parametrize("env", ["development", "production"])
def test_weak_metrics_token_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, keys_file: Path, env: str, token: str, reason: str
) -> None:
    monkeypatch.setenv("GRAPHGATE_ENV", env)
    monkeypatch.setenv("GRAPHGATE_AUTH__API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("GRAPHGATE_METRICS__TOKEN", token)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert message == f"invalid setting metrics.token (GRAPHGATE_METRICS__TOKEN): {reason}"
    assert token not in message
    assert excinfo.value.__cause__ is None


def test_metrics_token_is_accepted_and_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHGATE_METRICS__TOKEN", METRICS_TOKEN)
    settings = development()
    token = settings.metrics.token
    assert token is not None and token.get_secret_value() == METRICS_TOKEN
    assert METRICS_TOKEN not in repr(settings) and METRICS_TOKEN not in str(settings)
    view = public_view(settings)
    assert view["metrics"]["token"] == "**********"
    assert METRICS_TOKEN not in repr(view)


def test_metrics_token_from_the_secrets_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The token belongs in the secrets directory (file `metrics__token`)."""
    secrets = make_secrets_dir(tmp_path, {"metrics__token": METRICS_TOKEN})
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    token = development().metrics.token
    assert token is not None and token.get_secret_value() == METRICS_TOKEN


@pytest.mark.parametrize("port", ["1", "9464", "65535"])
def test_metrics_port_in_range_is_accepted(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv("GRAPHGATE_METRICS__PORT", port)
    assert development().metrics.port == int(port)


@pytest.mark.parametrize("port", ["0", "-1", "65536", "http"])
def test_metrics_port_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv("GRAPHGATE_METRICS__PORT", port)
    with pytest.raises(ConfigError, match=r"metrics\.port \(GRAPHGATE_METRICS__PORT\)"):
        development()


# --- secrets directory ---------------------------------------------------------------------


def make_secrets_dir(base: Path, files: dict[str, str]) -> Path:
    directory = base / "secrets"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value + "\n", encoding="utf-8")
    return directory


def test_secrets_dir_nested_names_fill_nested_sections(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`auth__jwt__secret` fills [auth.jwt] secret, merging with the TOML file's [auth.jwt]."""
    config = tmp_path / "graphgate.toml"
    config.write_text(
        f'[auth.jwt]\nalgorithms = ["HS256"]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n',
        encoding="utf-8",
    )
    secrets = make_secrets_dir(tmp_path, {
        "auth__jwt__secret": STRONG_SECRET,
        "rate_limit__storage_uri": "redis://:Pa55word@redis.internal:6379/0",
        "cors__allow_origins": "https://a.example, https://b.example",
    })
    monkeypatch.setenv("GRAPHGATE_CONFIG", str(config))
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    settings = load_settings()
    jwt = settings.auth.jwt
    assert jwt.secret is not None and jwt.secret.get_secret_value() == STRONG_SECRET
    assert (jwt.algorithms, jwt.issuer, jwt.audience) == (["HS256"], ISSUER, AUDIENCE)
    assert settings.auth.methods == ["jwt"]
    assert settings.rate_limit.shared
    assert settings.cors.allow_origins == ["https://a.example", "https://b.example"]
    assert STRONG_SECRET not in repr(public_view(settings))
    assert "Pa55word" not in repr(public_view(settings))


def test_weak_secret_from_secrets_dir_is_named_by_its_env_var(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = make_secrets_dir(tmp_path, {"auth__jwt__algorithms": "HS256",
                                          "auth__jwt__secret": "password123"})
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    with pytest.raises(ConfigError) as excinfo:
        development()
    message = str(excinfo.value)
    assert message == (
        "invalid setting auth.jwt.secret (GRAPHGATE_AUTH__JWT__SECRET): "
        "is shorter than 32 bytes"
    )
    assert "password123" not in message


def test_secrets_dir_file_for_a_whole_section_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = make_secrets_dir(tmp_path, {"auth__jwt": STRONG_SECRET,
                                          "auth__jwt__issuer": ISSUER})
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    with pytest.raises(ConfigError, match=r"GRAPHGATE_AUTH__JWT\b"):
        development()


# --- production's auth requirement -------------------------------------------------------------


def test_production_refuses_auth_off(keys_file: Path) -> None:
    """Even with a keys file, auth.enabled = false is refused in production."""
    message = refusal(auth={"enabled": False, "api_keys_file": keys_file})
    assert message == (
        "invalid setting auth (GRAPHGATE_AUTH): production refuses to run with auth off"
    )


def test_production_refuses_auth_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAPHGATE_ENV", "production")
    monkeypatch.setenv("GRAPHGATE_AUTH__ENABLED", "false")
    with pytest.raises(ConfigError, match=r"auth \(GRAPHGATE_AUTH\): production refuses"):
        load_settings()


def test_production_refuses_auth_without_a_method() -> None:
    assert refusal(auth={"enabled": True}) == (
        "invalid setting auth (GRAPHGATE_AUTH): "
        "production needs api_keys_file or a [auth.jwt] key source"
    )


def test_production_is_the_default_env() -> None:
    """Settings() with no sources is production, so it refuses to run without auth."""
    with pytest.raises(ConfigError, match="production needs api_keys_file"):
        load_settings()


@pytest.mark.parametrize("missing", [("issuer",), ("audience",), ("issuer", "audience")])
def test_production_jwt_needs_issuer_and_audience(
    keys_file: Path, missing: tuple[str, ...]
) -> None:
    """JWT without iss/aud would accept tokens minted elsewhere or for other APIs.

    Refused even when API keys are configured too.
    """
    auth = hmac_jwt(**dict.fromkeys(missing))
    auth["api_keys_file"] = keys_file
    message = refusal(auth=auth)
    assert message == (
        "invalid setting auth (GRAPHGATE_AUTH): production needs [auth.jwt] issuer and audience"
    )
    assert STRONG_SECRET not in message


@pytest.mark.parametrize("methods", [["api_key"], ["jwt"], ["api_key", "jwt"]])
def test_production_accepts_configured_auth(keys_file: Path, methods: list[str]) -> None:
    auth: dict[str, Any] = hmac_jwt() if "jwt" in methods else {}
    if "api_key" in methods:
        auth["api_keys_file"] = keys_file
    settings = load_settings(auth=auth)
    assert settings.env == "production"
    assert settings.auth.enabled
    assert settings.auth.methods == methods


@pytest.mark.parametrize("auth", [
    {"enabled": False},
    {"enabled": True},
    {"jwt": {"algorithms": ["HS256"], "secret": STRONG_SECRET}},
    {"jwt": {"jwks_url": "https://login.example.com/jwks", "issuer": ISSUER}},
], ids=["auth-off", "no-method", "jwt-no-issuer-audience", "jwt-no-audience"])
def test_development_allows_what_production_refuses(auth: dict[str, Any]) -> None:
    settings = development(auth=auth)
    assert settings.env == "development"
    assert settings.auth.enabled is auth.get("enabled", True)


def test_other_errors_are_reported_with_the_production_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every problem is on the one line, the auth refusal among them."""
    monkeypatch.setenv("GRAPHGATE_SERVER__TRUSTED_PROXIES", "proxy.internal")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert "(GRAPHGATE_SERVER__TRUSTED_PROXIES)" in message
    assert "(GRAPHGATE_AUTH): production needs" in message
    assert "; " in message and "\n" not in message
