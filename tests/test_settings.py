"""Settings: defaults, source priority, parsing, validation and secret handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.settings import (
    DEMO_GRAPH_NAME,
    DEMO_GRAPH_SPEC,
    ConfigError,
    Settings,
    load_settings,
    public_view,
)

PASSWORD = "hunter2"


@pytest.fixture(autouse=True)
def _no_graphgate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete every GRAPHGATE_* variable and CREDENTIALS_DIRECTORY for each test."""
    for name in list(os.environ):
        if name.startswith("GRAPHGATE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def api_keys_file(
    _no_graphgate_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Path:
    """Give every test a valid production auth method: an (empty) API keys file.

    Production refuses to start without auth; these tests are about other settings.
    Tests of that refusal delete GRAPHGATE_AUTH__API_KEYS_FILE again.
    """
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("", encoding="utf-8")  # no [[keys]] yet: still a valid keys file
    monkeypatch.setenv("GRAPHGATE_AUTH__API_KEYS_FILE", str(keys_file))
    return keys_file


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def use_config(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("GRAPHGATE_CONFIG", str(path))


def make_secrets_dir(base: Path, files: dict[str, str]) -> Path:
    directory = base / "secrets"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value + "\n", encoding="utf-8")
    return directory


# --- defaults ---------------------------------------------------------------------------


def test_bare_defaults_are_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no sources at all, env is production, which refuses to run without auth."""
    monkeypatch.delenv("GRAPHGATE_AUTH__API_KEYS_FILE")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert message == (
        "invalid setting auth (GRAPHGATE_AUTH): "
        "production needs api_keys_file or a [auth.jwt] key source"
    )
    assert excinfo.value.__cause__ is None


def test_defaults_are_production_with_sqlite(api_keys_file: Path) -> None:
    """With only auth configured, env is production and the store is SQLite under data_dir."""
    settings = load_settings()
    assert settings.env == "production"
    assert settings.database_url is None
    assert settings.database_kind == "sqlite"
    assert settings.sqlite_path == Path("var") / "graphgate.sqlite"
    assert settings.auth.enabled
    assert settings.auth.api_keys_file == api_keys_file
    assert settings.auth.methods == ["api_key"]
    assert settings.rate_limit.enabled
    assert settings.server.trusted_proxies == ["127.0.0.1", "::1"]


def test_graph_specs_fall_back_to_the_demo() -> None:
    """No configured graphs means the demo graph is served and is the default."""
    settings = load_settings()
    assert settings.graphs == {}
    assert settings.graph_specs == {DEMO_GRAPH_NAME: DEMO_GRAPH_SPEC}
    assert settings.default_graph_name == DEMO_GRAPH_NAME


def test_default_graph_name_is_the_first_configured_graph() -> None:
    """Without default_graph, the first configured graph is the default."""
    settings = load_settings(graphs={"b": "m:b", "a": "m:a"})
    assert settings.graph_specs == {"b": "m:b", "a": "m:a"}
    assert settings.default_graph_name == "b"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory:", "memory"),
        ("sqlite:///tmp/x.db", "sqlite"),
        ("postgresql://u:p@h/db", "postgres"),
        ("postgres://u:p@h/db", "postgres"),
    ],
)
def test_database_kind_follows_the_url_scheme(url: str, kind: str) -> None:
    """database_kind is derived from the database_url scheme."""
    assert load_settings(database_url=url).database_kind == kind


def test_sqlite_url_sets_the_sqlite_path() -> None:
    """A sqlite:/// URL points sqlite_path at the given file."""
    settings = load_settings(database_url="sqlite:///srv/data/gg.db")
    assert settings.sqlite_path == Path("srv/data/gg.db")


def test_logging_defaults() -> None:
    """JSON or console is chosen by env (auto); one access line per request."""
    logging = load_settings().logging
    assert (logging.level, logging.format, logging.access_log) == ("INFO", "auto", True)


@pytest.mark.parametrize("fmt", ["auto", "json", "console"])
def test_logging_format_from_env(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setenv("GRAPHGATE_LOGGING__FORMAT", fmt)
    monkeypatch.setenv("GRAPHGATE_LOGGING__ACCESS_LOG", "false")
    logging = load_settings().logging
    assert (logging.format, logging.access_log) == (fmt, False)


def test_telemetry_defaults_are_off() -> None:
    """No OTLP endpoint configured: tracing is off unless the OTEL_* variables say otherwise."""
    telemetry = load_settings().telemetry
    assert telemetry.otlp_endpoint is None
    assert telemetry.service_name == "graphgate"
    assert telemetry.resource_attributes == {}
    assert telemetry.sample_ratio == 1.0


def test_telemetry_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRAPHGATE_TELEMETRY__<KEY> fills [telemetry]; the attribute table is JSON there."""
    monkeypatch.setenv("GRAPHGATE_TELEMETRY__OTLP_ENDPOINT", "http://otel-collector:4318/v1/traces")
    monkeypatch.setenv("GRAPHGATE_TELEMETRY__SERVICE_NAME", "graphgate-eu")
    monkeypatch.setenv("GRAPHGATE_TELEMETRY__RESOURCE_ATTRIBUTES",
                       '{"deployment.environment": "prod", "service.namespace": "ai"}')
    monkeypatch.setenv("GRAPHGATE_TELEMETRY__SAMPLE_RATIO", "0.25")
    telemetry = load_settings().telemetry
    assert telemetry.otlp_endpoint == "http://otel-collector:4318/v1/traces"
    assert telemetry.service_name == "graphgate-eu"
    assert telemetry.resource_attributes == {
        "deployment.environment": "prod", "service.namespace": "ai"}
    assert telemetry.sample_ratio == 0.25


def test_telemetry_from_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """[telemetry] in the config file, with resource_attributes as a table; env wins."""
    config = write_toml(
        tmp_path / "gg.toml",
        '[telemetry]\notlp_endpoint = "http://collector:4318/v1/traces"\nsample_ratio = 0.5\n'
        '[telemetry.resource_attributes]\n"deployment.environment" = "staging"\n',
    )
    use_config(monkeypatch, config)
    monkeypatch.setenv("GRAPHGATE_TELEMETRY__OTLP_ENDPOINT", "http://other:4318/v1/traces")
    telemetry = load_settings().telemetry
    assert telemetry.otlp_endpoint == "http://other:4318/v1/traces"
    assert telemetry.sample_ratio == 0.5
    assert telemetry.resource_attributes == {"deployment.environment": "staging"}


# --- source priority ----------------------------------------------------------------------


def test_toml_file_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Values in the GRAPHGATE_CONFIG file replace the defaults."""
    config = write_toml(
        tmp_path / "gg.toml",
        'env = "development"\n[server]\nport = 9000\n[streaming]\nheartbeat_interval_s = 2.5\n',
    )
    use_config(monkeypatch, config)
    settings = load_settings()
    assert settings.env == "development"
    assert settings.server.port == 9000
    assert settings.streaming.heartbeat_interval_s == 2.5
    assert settings.server.host == "127.0.0.1"


def test_secrets_dir_overrides_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file in GRAPHGATE_SECRETS_DIR wins over the TOML file, nested names included."""
    config = write_toml(
        tmp_path / "gg.toml",
        'database_url = "memory:"\n[postgres]\npool_max_size = 3\npool_timeout_s = 7.0\n',
    )
    secrets = make_secrets_dir(
        tmp_path,
        {"database_url": f"postgresql://app:{PASSWORD}@db/app", "postgres__pool_max_size": "20"},
    )
    use_config(monkeypatch, config)
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == f"postgresql://app:{PASSWORD}@db/app"
    assert settings.database_kind == "postgres"
    assert settings.postgres.pool_max_size == 20
    # A key the secrets dir does not set keeps the TOML value (sections merge).
    assert settings.postgres.pool_timeout_s == 7.0


def test_env_overrides_secrets_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GRAPHGATE_<SECTION>__<KEY> variables beat both the secrets dir and the TOML file."""
    config = write_toml(
        tmp_path / "gg.toml",
        "[streaming]\nheartbeat_interval_s = 2.0\nmax_duration_s = 60.0\n"
        "[server]\nport = 9000\n[demo]\nreply_tokens = 5\n",
    )
    secrets = make_secrets_dir(
        tmp_path, {"streaming__heartbeat_interval_s": "3.0", "server__port": "9001"}
    )
    use_config(monkeypatch, config)
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("GRAPHGATE_STREAMING__HEARTBEAT_INTERVAL_S", "4.0")
    settings = load_settings()
    assert settings.streaming.heartbeat_interval_s == 4.0  # env
    assert settings.server.port == 9001  # secrets dir over TOML
    assert settings.streaming.max_duration_s == 60.0  # TOML, same section as the env var
    assert settings.demo.reply_tokens == 5  # TOML over default
    assert settings.demo.token_delay_ms == 20  # default


def test_env_top_level_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A top-level setting is read from GRAPHGATE_<KEY>, case-insensitively for the name."""
    monkeypatch.setenv("GRAPHGATE_ENV", "development")
    monkeypatch.setenv("graphgate_database_url", "memory:")
    settings = load_settings()
    assert settings.env == "development"
    assert settings.database_kind == "memory"


def test_credentials_directory_is_a_fallback_secrets_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """systemd's CREDENTIALS_DIRECTORY is read when GRAPHGATE_SECRETS_DIR is unset."""
    secrets = make_secrets_dir(tmp_path, {"database_url": "memory:"})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secrets))
    assert load_settings().database_kind == "memory"


def test_secrets_dir_skips_dot_files_and_unknown_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Dot-files, directories and files that name no setting are ignored, not rejected."""
    secrets = make_secrets_dir(
        tmp_path,
        {
            ".database_url": "mysql://ignored",
            "api_token": "some-other-credential",
            "unrelated__thing": "x",
            "server__port": "8123",
        },
    )
    (secrets / "logging").mkdir()
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.server.port == 8123
    assert settings.database_url is None
    assert settings.logging.level == "INFO"


def test_secrets_dir_in_kubernetes_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Kubernetes Secret volume (symlinks through `..data`) is read through its links."""
    volume = tmp_path / "volume"
    payload = volume / "..2026_01_01_00_00_00.000000000"
    payload.mkdir(parents=True)
    (payload / "database_url").write_text("memory:\n", encoding="utf-8")
    (volume / "..data").symlink_to(payload.name)
    (volume / "database_url").symlink_to("..data/database_url")
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(volume))
    assert load_settings().database_kind == "memory"


def test_missing_secrets_dir_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A GRAPHGATE_SECRETS_DIR that is not a directory stops start-up with ConfigError."""
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="GRAPHGATE_SECRETS_DIR"):
        load_settings()


# --- graphs --------------------------------------------------------------------------------


def test_graphs_env_accepts_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRAPHGATE_GRAPHS may be a JSON object of name to spec."""
    monkeypatch.setenv("GRAPHGATE_GRAPHS", '{"a": "pkg.mod:graph", "b-2": "pkg.other:make"}')
    assert load_settings().graph_specs == {"a": "pkg.mod:graph", "b-2": "pkg.other:make"}


def test_graphs_env_accepts_name_equals_spec_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRAPHGATE_GRAPHS may be `a=mod:attr,b=mod:attr`, spaces around items ignored."""
    monkeypatch.setenv("GRAPHGATE_GRAPHS", "a=pkg.mod:graph, b_2 = pkg.other:make")
    monkeypatch.setenv("GRAPHGATE_DEFAULT_GRAPH", "b_2")
    settings = load_settings()
    assert settings.graph_specs == {"a": "pkg.mod:graph", "b_2": "pkg.other:make"}
    assert settings.default_graph_name == "b_2"


@pytest.mark.parametrize(
    "value",
    ["just-a-name", "a=no_colon", "a=:attr", "a=mod:", "bad name=m:x", '{"a": ', "=m:x"],
)
def test_malformed_graphs_are_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A GRAPHGATE_GRAPHS value that is not valid JSON or name=module:attr pairs is rejected."""
    monkeypatch.setenv("GRAPHGATE_GRAPHS", value)
    with pytest.raises(ConfigError, match=r"graphs \(GRAPHGATE_GRAPHS\)"):
        load_settings()


def test_default_graph_must_be_one_of_the_graphs() -> None:
    """default_graph naming a graph that is not served is a ConfigError."""
    with pytest.raises(ConfigError, match="'nope' is not one of the served graphs"):
        load_settings(graphs={"a": "m:a"}, default_graph="nope")


def test_default_graph_may_name_the_demo() -> None:
    """With no graphs configured, default_graph may name the demo graph."""
    assert load_settings(default_graph=DEMO_GRAPH_NAME).default_graph_name == DEMO_GRAPH_NAME


def test_default_graph_error_names_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error for an unknown default_graph names the GRAPHGATE_DEFAULT_GRAPH variable."""
    monkeypatch.setenv("GRAPHGATE_DEFAULT_GRAPH", "nope")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert "GRAPHGATE_DEFAULT_GRAPH" in str(excinfo.value)


# --- secrets never leak ----------------------------------------------------------------------


def test_database_url_is_a_secret_masked_in_public_view() -> None:
    """database_url is a SecretStr and public_view never shows its value."""
    url = f"postgresql://app:{PASSWORD}@db.internal/app"
    settings = load_settings(database_url=url)
    assert isinstance(settings.database_url, SecretStr)
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.database_url)
    view = public_view(settings)
    assert PASSWORD not in repr(view)
    assert "db.internal" not in repr(view)
    assert view["server"]["port"] == 8000


def test_invalid_database_url_error_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unsupported database URL is a ConfigError that never echoes the URL."""
    monkeypatch.setenv("GRAPHGATE_DATABASE_URL", f"mysql://u:{PASSWORD}@h/db")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert "database_url" in message
    assert "GRAPHGATE_DATABASE_URL" in message
    assert PASSWORD not in message
    assert "mysql" not in message
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_invalid_database_url_in_secrets_dir_hides_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bad database_url from the secrets dir is reported without its value."""
    secrets = make_secrets_dir(tmp_path, {"database_url": f"mysql://u:{PASSWORD}@h/db"})
    monkeypatch.setenv("GRAPHGATE_SECRETS_DIR", str(secrets))
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert PASSWORD not in str(excinfo.value)


# --- validation errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_name", "value", "setting"),
    [
        ("GRAPHGATE_STREAMING__HEARTBEAT_INTERVAL_S", "0", "streaming.heartbeat_interval_s"),
        ("GRAPHGATE_STREAMING__HEARTBEAT_INTERVAL_S", "soon", "streaming.heartbeat_interval_s"),
        ("GRAPHGATE_SERVER__PORT", "70000", "server.port"),
        ("GRAPHGATE_SERVER__WORKERS", "-1", "server.workers"),
        ("GRAPHGATE_LOGGING__LEVEL", "LOUD", "logging.level"),
        ("GRAPHGATE_LOGGING__FORMAT", "xml", "logging.format"),
        ("GRAPHGATE_LOGGING__ACCESS_LOG", "sometimes", "logging.access_log"),
        ("GRAPHGATE_METRICS__PORT", "70000", "metrics.port"),
        ("GRAPHGATE_TELEMETRY__SAMPLE_RATIO", "1.5", "telemetry.sample_ratio"),
        ("GRAPHGATE_TELEMETRY__SAMPLE_RATIO", "-0.1", "telemetry.sample_ratio"),
        ("GRAPHGATE_RUNS__DURABILITY", "never", "runs.durability"),
        ("GRAPHGATE_LIMITS__MAX_BODY_BYTES", "10", "limits.max_body_bytes"),
        ("GRAPHGATE_ENV", "staging", "env"),
    ],
)
def test_invalid_env_value_names_setting_and_env_var(
    monkeypatch: pytest.MonkeyPatch, env_name: str, value: str, setting: str
) -> None:
    """An invalid value raises ConfigError naming the dotted setting and its env var."""
    monkeypatch.setenv(env_name, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert f"invalid setting {setting} ({env_name})" in message
    assert "\n" not in message


def test_invalid_toml_value_names_setting_and_env_var(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bad value from the TOML file is reported with the same setting and env var names."""
    use_config(monkeypatch, write_toml(tmp_path / "gg.toml", "[streaming]\nmax_duration_s = -1\n"))
    with pytest.raises(
        ConfigError, match=r"streaming\.max_duration_s \(GRAPHGATE_STREAMING__MAX_DURATION_S\)"
    ):
        load_settings()


def test_unknown_top_level_key_in_toml_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A typo at the top level of the config file stops start-up."""
    use_config(monkeypatch, write_toml(tmp_path / "gg.toml", 'enviroment = "development"\n'))
    with pytest.raises(ConfigError, match="enviroment"):
        load_settings()


def test_unknown_section_key_in_toml_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A typo inside a section of the config file stops start-up and names the key."""
    use_config(monkeypatch, write_toml(tmp_path / "gg.toml", "[server]\nprot = 9000\n"))
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings()


def test_missing_config_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GRAPHGATE_CONFIG naming a file that does not exist is a ConfigError."""
    use_config(monkeypatch, tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_invalid_toml_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A config file that is not valid TOML is a ConfigError naming the file."""
    config = write_toml(tmp_path / "gg.toml", "[server\nport = = 1\n")
    use_config(monkeypatch, config)
    with pytest.raises(ConfigError, match="not valid TOML") as excinfo:
        load_settings()
    assert str(config) in str(excinfo.value)


def test_pool_min_size_above_max_size_is_rejected() -> None:
    """postgres.pool_min_size greater than pool_max_size is a ConfigError."""
    with pytest.raises(ConfigError, match=r"pool_max_size.*must be at least pool_min_size"):
        load_settings(postgres={"pool_min_size": 5, "pool_max_size": 2})


def test_pool_min_size_equal_to_max_size_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """pool_min_size equal to pool_max_size is valid."""
    monkeypatch.setenv("GRAPHGATE_POSTGRES__POOL_MIN_SIZE", "4")
    monkeypatch.setenv("GRAPHGATE_POSTGRES__POOL_MAX_SIZE", "4")
    settings = load_settings()
    assert (settings.postgres.pool_min_size, settings.postgres.pool_max_size) == (4, 4)


def test_several_problems_are_reported_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every invalid setting is listed, separated by semicolons, in a one-line message."""
    monkeypatch.setenv("GRAPHGATE_SERVER__PORT", "0")
    monkeypatch.setenv("GRAPHGATE_RUNS__RECURSION_LIMIT", "0")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert "GRAPHGATE_SERVER__PORT" in message
    assert "GRAPHGATE_RUNS__RECURSION_LIMIT" in message
    assert "; " in message
    assert "\n" not in message


def test_settings_are_frozen() -> None:
    """A built Settings cannot be mutated."""
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.env = "development"  # type: ignore[misc]


def test_malformed_postgres_url_is_refused_without_echoing_it() -> None:
    """A postgresql:// URL libpq cannot parse is refused at start-up, password unshown."""
    with pytest.raises(ConfigError) as caught:
        load_settings(database_url="postgresql://app:S3cretPW@[::1/x")
    assert "not a valid postgresql:// URL" in str(caught.value)
    assert "S3cretPW" not in str(caught.value)
