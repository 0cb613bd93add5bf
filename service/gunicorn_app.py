"""gunicorn application that hands each worker the Settings built by the CLI."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from service.gunicorn_conf import gunicorn_options
from service.settings import Settings


class GraphgateGunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, *, development_key: str | None = None) -> None:
        self.settings = settings
        self.development_key = development_key
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Runs in each worker after fork: the app, and with it every pool and graph, is
        # created per worker, never shared across a fork.
        from service.app import create_app
        from service.observability.logging import configure_logging

        configure_logging(self.settings)
        return create_app(self.settings, development_key=self.development_key)
