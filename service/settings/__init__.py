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

from service.settings.model import (
    DEMO_GRAPH_NAME,
    DEMO_GRAPH_SPEC,
    ENV_PREFIX,
    Settings,
    describe_validation_error,
    load_settings,
    public_view,
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
    JwtSettings,
    MetricsSettings,
    RateLimitSettings,
    TelemetrySettings,
)
from service.settings.sources import CONFIG_FILE_VAR, SECRETS_DIR_VAR, ConfigError

__all__ = [
    "CONFIG_FILE_VAR",
    "DEMO_GRAPH_NAME",
    "DEMO_GRAPH_SPEC",
    "ENV_PREFIX",
    "SECRETS_DIR_VAR",
    "AuthSettings",
    "ConfigError",
    "CorsSettings",
    "DemoSettings",
    "HttpSettings",
    "JwtSettings",
    "LimitsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "PostgresSettings",
    "RateLimitSettings",
    "RunSettings",
    "ServerSettings",
    "Settings",
    "StreamingSettings",
    "TelemetrySettings",
    "describe_validation_error",
    "load_settings",
    "public_view",
]
