"""graphgate's one Settings object.

Built once at the entry point (`load_settings`) and passed down; nothing here runs at
import time. Sources, lowest to highest priority:

1. defaults below;
2. the TOML file named by ``GRAPHGATE_CONFIG``;
3. a secrets directory (``GRAPHGATE_SECRETS_DIR``, or systemd's ``$CREDENTIALS_DIRECTORY``),
   one file per setting, named like the env var without its prefix (``database_url``,
   ``postgres__pool_max_size``), for Kubernetes Secret volumes and systemd credentials;
4. environment variables ``GRAPHGATE_<KEY>`` / ``GRAPHGATE_<SECTION>__<KEY>``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "GRAPHGATE_"
CONFIG_FILE_VAR = "GRAPHGATE_CONFIG"
SECRETS_DIR_VAR = "GRAPHGATE_SECRETS_DIR"
DEMO_GRAPH_SPEC = "service.graphs.demo:make_demo_graph"
DEMO_GRAPH_NAME = "demo"


class _Section(BaseModel):
    # A typo in a config file must stop start-up, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """How `graphgate serve` listens and how gunicorn manages workers."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to bind.")
    workers: int = Field(
        1, ge=1, le=64, description="1 runs one uvicorn process; more runs gunicorn workers."
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="Idle keep-alive; must exceed the proxy's upstream keepalive_timeout "
        "(nginx: 60 s) or the proxy races a closing socket and returns 502.",
    )
    graceful_timeout_s: int = Field(
        30, ge=1, description="gunicorn graceful_timeout: how long workers may drain on stop."
    )
    worker_tmp_dir: str | None = Field(
        None, description="gunicorn heartbeat dir; default /dev/shm when it exists (tmpfs)."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated proxy IPs/networks whose X-Forwarded-* headers are trusted.",
    )
    max_requests: int = Field(
        0, ge=0, description="Recycle a worker after this many requests (0 = never)."
    )
    max_requests_jitter: int = Field(0, ge=0, description="Random spread added to max_requests.")


class PostgresSettings(_Section):
    """psycopg pool settings, used when database_url is postgresql://."""

    pool_min_size: int = Field(1, ge=0, description="Connections kept open per worker.")
    pool_max_size: int = Field(10, ge=1, description="Connection cap per worker.")
    pool_timeout_s: float = Field(
        5.0, gt=0, description="Wait for a free connection before failing with 503."
    )
    connect_timeout_s: int = Field(5, ge=1, description="TCP/auth timeout for new connections.")
    max_lifetime_s: float = Field(1800.0, gt=0, description="Recycle connections after this age.")
    max_idle_s: float = Field(300.0, gt=0, description="Close idle surplus connections after this.")
    startup_timeout_s: float = Field(
        30.0, gt=0, description="How long start-up waits for the database before failing."
    )

    @field_validator("pool_max_size")
    @classmethod
    def _sizes(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("pool_min_size")
        if isinstance(minimum, int) and minimum > value:
            raise ValueError(f"must be at least pool_min_size ({minimum})")
        return value


class StreamingSettings(_Section):
    """Server-Sent Events behaviour."""

    heartbeat_interval_s: float = Field(
        15.0, gt=0, description="Send a `: heartbeat` comment after this much silence."
    )
    max_duration_s: float = Field(
        900.0, gt=0, description="Cancel a run and end its stream with an error after this."
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A client that takes no data for this long (stopped reading, socket "
        "still open) is treated as disconnected and its run cancelled.",
    )


class RunSettings(_Section):
    """How graph runs execute."""

    durability: Literal["sync", "async", "exit"] = Field(
        "sync",
        description="LangGraph checkpoint durability; sync commits each step before the next.",
    )
    recursion_limit: int = Field(25, ge=1, le=1000, description="LangGraph super-step limit.")
    lease_ttl_s: float = Field(
        30.0,
        ge=2,
        description="A thread's run lease expires this long after its holder stops renewing "
        "it (e.g. a crashed worker); it is renewed every third of this.",
    )


class LimitsSettings(_Section):
    """Input limits."""

    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body.")
    max_message_chars: int = Field(32_000, ge=1, description="Longest accepted chat message.")


class DemoSettings(_Section):
    """The built-in offline demo graph."""

    token_delay_ms: int = Field(
        20, ge=0, le=10_000, description="Pause before each streamed token."
    )
    reply_tokens: int = Field(24, ge=1, le=10_000, description="Approximate reply length.")


class LoggingSettings(_Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")


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
        "production", description="production is the default; development relaxes nothing "
        "security-relevant but prints human-readable logs."
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
            sources.append(_SecretsDirSource(settings_cls, Path(secrets_dir)))
        config_file = environ.get(CONFIG_FILE_VAR)
        if config_file:
            sources.append(_TomlFileSource(settings_cls, Path(config_file)))
        return tuple(sources)


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming it and the reason."""


class _TomlFileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as fh:
                return tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                f"{CONFIG_FILE_VAR}: config file {self.path} does not exist"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{CONFIG_FILE_VAR}: {self.path} is not valid TOML ({exc})") from None


class _SecretsDirSource(PydanticBaseSettingsSource):
    """One file per setting; `section__key` files fill nested sections.

    pydantic-settings' own secrets source only fills top-level fields, and we want
    `postgres__…`-style names to work like the env vars they mirror.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        super().__init__(settings_cls)
        self.directory = directory

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        if not self.directory.is_dir():
            raise ConfigError(f"{SECRETS_DIR_VAR}: {self.directory} is not a directory")
        fields = Settings.model_fields
        values: dict[str, Any] = {}
        for entry in sorted(self.directory.iterdir()):
            # Kubernetes secret volumes hold `..data` links and dot-files; other
            # credentials may share the directory, so unknown names are skipped.
            if entry.name.startswith(".") or not entry.is_file():
                continue
            section, _, key = entry.name.lower().partition("__")
            if section not in fields:
                continue
            value = entry.read_text().strip()
            if key:
                values.setdefault(section, {})[key] = value
            else:
                values[section] = value
        return values


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
        env_name = ENV_PREFIX + "__".join(loc[:2]).upper() if loc else ENV_PREFIX + "*"
        reason = error["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {setting} ({env_name}): {reason}")
    return "; ".join(lines)


def public_view(settings: Settings) -> Mapping[str, Any]:
    """The effective settings with secrets masked, for `graphgate config` and audits."""
    return settings.model_dump(mode="json")
