"""The one `Settings` object, how it is loaded, and how its errors are reported."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from service.settings.sections import (
    DemoSettings,
    LimitsSettings,
    LoggingSettings,
    PostgresSettings,
    RunSettings,
    ServerSettings,
    StreamingSettings,
)
from service.settings.security import (
    AuthSettings,
    CorsSettings,
    HttpSettings,
    MetricsSettings,
    RateLimitSettings,
    TelemetrySettings,
)
from service.settings.sources import (
    CONFIG_FILE_VAR,
    SECRETS_DIR_VAR,
    ConfigError,
    SecretsDirSource,
    TomlFileSource,
)

ENV_PREFIX = "GRAPHGATE_"
DEMO_GRAPH_SPEC = "service.graphs.demo:make_demo_graph"
DEMO_GRAPH_NAME = "demo"


def _parse_graphs(value: Any) -> Any:
    """Accept a mapping, JSON, or `name=module:attr,name2=module:attr`."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        import json

        return json.loads(text)
    graphs: dict[str, str] = {}
    for item in text.split(","):
        name, sep, spec = item.partition("=")
        if not sep:
            raise ValueError("expected name=module:attr pairs separated by commas")
        graphs[name.strip()] = spec.strip()
    return graphs


class Settings(BaseSettings):
    """Everything graphgate can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    env: Literal["development", "production"] = Field(
        "production", description="production is the default and refuses to start without "
        "auth; development allows auth off (or prints an ephemeral key when none is "
        "configured), serves /docs without credentials and prints human-readable logs."
    )
    database_url: SecretStr | None = Field(
        None,
        description="Unset: SQLite in data_dir. `postgresql://…`: Postgres. `memory:`: "
        "in-process, lost on restart. `sqlite:///path.db`: SQLite at that path.",
    )
    data_dir: Path = Field(Path("var"), description="Where the embedded SQLite database lives.")
    graphs: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Graph name to `module:attr` spec. Empty serves the built-in demo graph.",
    )
    default_graph: str | None = Field(
        None, description="Graph used when a request names none; default: the first one."
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    runs: RunSettings = Field(default_factory=RunSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("graphs", mode="before")
    @classmethod
    def _graphs_from_text(cls, value: Any) -> Any:
        return _parse_graphs(value)

    @field_validator("graphs")
    @classmethod
    def _graph_specs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, spec in value.items():
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"graph name {name!r} must be letters, digits, '-' or '_'")
            module, sep, attr = spec.partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"graph {name!r}: spec {spec!r} is not in module:attr form")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        if url == "memory:" or url.startswith("sqlite:///"):
            return value
        if url.startswith(("postgresql://", "postgres://")):
            # Parse now: psycopg's pool would otherwise log libpq's parse error, which
            # quotes the whole URL, password included, on every reconnect attempt.
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(url)
            except Exception:
                raise ValueError("is not a valid postgresql:// URL") from None
            return value
        # Never echo the URL: it may carry a password.
        raise ValueError("must be memory:, sqlite:///<path> or postgresql://…")

    @field_validator("auth")
    @classmethod
    def _production_auth(cls, value: AuthSettings, info: ValidationInfo) -> AuthSettings:
        # A field validator (not a model one) so the error names GRAPHGATE_AUTH__….
        if info.data.get("env") != "production":
            return value
        if not value.enabled:
            raise ValueError("production refuses to run with auth off")
        if not value.methods:
            raise ValueError("production needs api_keys_file or a [auth.jwt] key source")
        if value.jwt.enabled and not (value.jwt.issuer and value.jwt.audience):
            raise ValueError("production needs [auth.jwt] issuer and audience")
        return value

    @field_validator("default_graph")
    @classmethod
    def _default_graph_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not a model one) so the error names GRAPHGATE_DEFAULT_GRAPH.
        served = info.data.get("graphs") or {DEMO_GRAPH_NAME: DEMO_GRAPH_SPEC}
        if value is not None and value not in served:
            raise ValueError(f"{value!r} is not one of the served graphs: {sorted(served)}")
        return value

    @property
    def graph_specs(self) -> dict[str, str]:
        """The graphs to serve: the configured ones, or the demo graph."""
        return dict(self.graphs) or {DEMO_GRAPH_NAME: DEMO_GRAPH_SPEC}

    @property
    def default_graph_name(self) -> str:
        return self.default_graph or next(iter(self.graph_specs))

    @property
    def database_kind(self) -> Literal["memory", "sqlite", "postgres"]:
        url = self.database_url.get_secret_value() if self.database_url else None
        if url is None or url.startswith("sqlite:///"):
            return "sqlite"
        if url == "memory:":
            return "memory"
        return "postgres"

    @property
    def sqlite_path(self) -> Path:
        url = self.database_url.get_secret_value() if self.database_url else None
        if url and url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///"))
        return self.data_dir / "graphgate.sqlite"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Runs when a Settings is built (at the entry point), never at import.
        environ = os.environ
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = environ.get(SECRETS_DIR_VAR) or environ.get("CREDENTIALS_DIRECTORY")
        if secrets_dir:
            sources.append(SecretsDirSource(settings_cls, Path(secrets_dir)))
        config_file = environ.get(CONFIG_FILE_VAR)
        if config_file:
            sources.append(TomlFileSource(settings_cls, Path(config_file)))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build the Settings from every source, raising ConfigError with one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: the setting, the env var that sets it, and the reason."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        setting = ".".join(loc) or "settings"
        # List positions (`algorithms.0`) are not part of the variable's name.
        names = [part for part in loc if not part.isdigit()]
        env_name = ENV_PREFIX + "__".join(names).upper() if names else ENV_PREFIX + "*"
        reason = error["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {setting} ({env_name}): {reason}")
    return "; ".join(lines)


def public_view(settings: Settings) -> Mapping[str, Any]:
    """The effective settings with secrets masked, for `graphgate config` and audits."""
    return settings.model_dump(mode="json")
