"""One log configuration for graphgate, uvicorn, gunicorn and every stdlib logger.

`configure_logging(settings)` installs a single handler on the root logger whose
`structlog.stdlib.ProcessorFormatter` renders both kinds of record the same way:

* structlog events (`structlog.get_logger(...).info("event", key=value)`), and
* plain `logging` records from uvicorn.error, gunicorn.error, psycopg, httpx, slowapi...

Each line gets a UTC ISO timestamp, the level, the logger name, the request context
bound in contextvars (request id, principal), any `extra_processors` (trace ids), and
then passes through the `Redactor`, tracebacks included, before it is rendered: JSON
lines in production, console output in development (`[logging] format`).

uvicorn's and gunicorn's access loggers are silenced: graphgate writes its own access
line (service.middleware.access_log), which never includes the query string.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson
import structlog
from gunicorn import glogging
from structlog.types import EventDict, Processor

from service.observability.redact import Redactor, secret_values
from service.settings import Settings

# Server loggers that get handlers of their own from uvicorn or gunicorn; they are
# stripped and made to propagate to the root handler.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "gunicorn", "gunicorn.error")
# Their access loggers print the raw URL (query string and all): silenced.
_ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")

_HANDLER_MARK = "_graphgate"


def log_format(settings: Settings) -> str:
    """"json" or "console": `[logging] format`, with auto resolved from the environment."""
    if settings.logging.format != "auto":
        return settings.logging.format
    return "json" if settings.env == "production" else "console"


def configure_logging(
    settings: Settings,
    *,
    stream: TextIO | None = None,
    extra_processors: Sequence[Processor] = (),
) -> None:
    """Route structlog and stdlib logging through one formatter on `stream` (stderr).

    Safe to call again (the gunicorn master, then each worker after fork; tests): the
    previous graphgate handler is replaced, never duplicated.

    `extra_processors` run on every line, stdlib records included, before the traceback
    is formatted and before redaction: e.g. the tracing module's `add_trace_ids`.
    """
    stream = sys.stderr if stream is None else stream
    level: int = getattr(logging, settings.logging.level)
    redactor = Redactor(secret_values(settings))

    # For every line, whatever its origin; they run once per line.
    pre: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    # Tracebacks become text before the redactor, so it sees them too. The time stamp
    # comes after it: it is ours, and a fresh string every line that would only cost
    # the redactor a pattern search.
    post: list[Processor] = [
        *extra_processors,
        structlog.processors.format_exc_info,
        redactor,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format(settings) == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream))

    formatter = structlog.stdlib.ProcessorFormatter(
        # Only for records from plain `logging`; structlog's own events ran `pre` and
        # `post` already (so the record they leave behind holds no secret either).
        foreign_pre_chain=[*pre, _stack_text, *post],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)

    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        # A new list: UvicornWorker shares gunicorn.error's handler list with uvicorn.error.
        logger.handlers = []
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    for name in _ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [logging.NullHandler()]
        logger.propagate = False
    # Python warnings (deprecations from libraries) as log lines, not raw stderr text.
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            *pre,
            structlog.processors.StackInfoRenderer(),
            *post,
            renderer,
        ],
        # Calls below the level return at once, before any processing.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # graphgate's own events are written straight to the stream: the stdlib route
        # (two LogRecords and a formatter per line) cost several times more per line.
        # The handler's lock keeps lines from both routes whole.
        logger_factory=_NamedWriteLoggerFactory(stream, handler.lock),
        # Module-level loggers pick up a reconfiguration (tests, gunicorn workers).
        cache_logger_on_first_use=False,
    )


def _orjson_text(obj: Any, **kwargs: Any) -> str:
    """JSONRenderer's serializer: orjson (several times faster than `json` per line).

    After the redactor every value is JSON-native (it turns other objects into their
    scrubbed repr); `default` still covers what a foreign record may carry.
    """
    return orjson.dumps(obj, default=kwargs.get("default"),
                        option=orjson.OPT_NON_STR_KEYS).decode()


class _NamedWriteLogger:
    """Writes rendered lines to the stream; carries its name for `add_logger_name`."""

    def __init__(self, stream: TextIO, lock: Any, name: str) -> None:
        self.stream, self.lock, self.name = stream, lock, name

    def msg(self, message: str) -> None:
        with self.lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _NamedWriteLoggerFactory:
    def __init__(self, stream: TextIO, lock: Any) -> None:
        self.stream, self.lock = stream, lock

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else "graphgate"
        return _NamedWriteLogger(self.stream, self.lock, name)


def _stack_text(logger: Any, method: str, event: EventDict) -> EventDict:
    """A stdlib record's `stack_info` (already text) under structlog's key, `stack`."""
    stack = event.pop("stack_info", None)
    if isinstance(stack, str):
        event["stack"] = stack
    return event


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger class, writing through graphgate's root handler.

    gunicorn's master sets up `gunicorn.error` with a handler and format of its own
    (after the CLI has configured logging, and again on SIGHUP); this keeps its level and
    drops the handler, so the master's lines ("Booting worker", "Handling signal") are
    JSON or console lines like every other. Use as gunicorn's `logger_class`.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.handlers = []
        self.error_log.propagate = True
        self.access_log.handlers = [logging.NullHandler()]
        self.access_log.propagate = False
