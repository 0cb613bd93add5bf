"""structlog configured once at start-up: JSON lines in production, console in development."""

from __future__ import annotations

import logging
import sys

import structlog

from service.observability.redact import Redactor, secret_values
from service.settings import Settings


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.logging.level)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text here so the redactor sees them too.
        structlog.processors.format_exc_info,
        Redactor(secret_values(settings)),
    ]
    renderer: structlog.types.Processor
    if settings.env == "production":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # uvicorn/gunicorn use stdlib logging; keep their lines on stderr at our level.
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
