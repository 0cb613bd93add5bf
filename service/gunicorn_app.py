"""gunicorn application that hands each worker the Settings built by the CLI."""

from __future__ import annotations

from typing import Any

import structlog
from gunicorn.app.base import BaseApplication

from service.gunicorn_conf import gunicorn_options
from service.security.api_keys import KeyStore
from service.settings import ConfigError, Settings

log = structlog.get_logger("graphgate.auth")


class GraphgateGunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, *, development_key: str | None = None) -> None:
        self.settings = settings
        self.development_key = development_key
        # The master reads the API keys file and workers inherit the parsed keys, so a
        # file broken by a bad edit cannot stop workers from booting (gunicorn would halt
        # the whole service); on SIGHUP the master re-reads it and keeps the last good one.
        self.api_keys = self._read_keys(None)
        super().__init__()

    def _read_keys(self, current: KeyStore | None) -> KeyStore | None:
        path = self.settings.auth.api_keys_file
        if path is None:
            return None
        try:
            keys = KeyStore.load(path)
        except ConfigError as exc:
            if current is None:
                raise
            log.error("api_keys_reload_failed", reason=str(exc), kept=len(current.ids))
            return current
        if current is not None:
            log.info("api_keys_reloaded", count=len(keys.ids))
        return keys

    def reload(self) -> None:
        # gunicorn's master calls this on SIGHUP, before it starts fresh workers.
        super().reload()
        self.api_keys = self._read_keys(self.api_keys)

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Runs in each worker after fork: the app, and with it every pool and graph, is
        # created per worker, never shared across a fork.
        from service.app import create_app
        from service.observability.logging import configure_logging
        from service.observability.tracing import add_trace_ids

        configure_logging(self.settings, extra_processors=[add_trace_ids])
        return create_app(self.settings, development_key=self.development_key,
                          api_keys=self.api_keys)
