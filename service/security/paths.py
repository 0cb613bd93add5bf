"""Which paths are served without credentials or rate limits (one list for app and audit)."""

from __future__ import annotations

from service.settings import Settings

# Orchestrators and load balancers probe these; they must never be locked out or throttled.
# /ok is the official LangGraph server's health path, which its clients probe.
PROBE_PATHS = ("/healthz", "/readyz", "/ok")
METRICS_PATH = "/metrics"
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")


def public_paths(settings: Settings) -> list[str]:
    """Paths answered without credentials."""
    paths = list(PROBE_PATHS)
    if settings.metrics.enabled:
        # /metrics checks its own credential ([metrics] token) and port, not API keys.
        paths.append(METRICS_PATH)
    if settings.env == "development":
        # The interactive docs, so `make run` can be explored in a browser.
        paths.extend(DOCS_PATHS)
    return paths


def unlimited_paths() -> list[str]:
    """Paths never rate-limited."""
    return [*PROBE_PATHS, METRICS_PATH]
