"""The `graphgate` command: serve, migrate, config, version, chat."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import platform
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from service import __version__
from service.chat import add_chat_parser
from service.security.keys_cli import add_keys_parser, run_keys_command
from service.settings import ConfigError, Settings, load_settings, public_view

EXIT_CONFIG = 2  # invalid settings or graph specs
EXIT_STARTUP = 1  # a dependency (the database) is not there


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphgate",
        description="Serve LangGraph graphs over HTTP with Server-Sent Events and durable "
        "threads. Configuration: GRAPHGATE_* environment variables, a TOML file named by "
        "GRAPHGATE_CONFIG, and a secrets directory; see docs/configuration.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="interface to bind (default from settings: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default from settings: 8000)")
    serve.add_argument(
        "--workers", type=int, help="1: one uvicorn process; more: gunicorn with uvicorn workers"
    )
    commands.add_parser("migrate", help="create or upgrade the database tables, then exit")
    commands.add_parser("config", help="print the effective settings (secrets masked)")
    check = commands.add_parser(
        "check-config", help="audit the security posture of the effective settings"
    )
    check.add_argument("--strict", action="store_true",
                       help="exit non-zero on any warning, not only on critical findings")
    check.add_argument("--format", choices=("text", "json"), default="text", dest="fmt")
    add_keys_parser(commands)
    add_chat_parser(commands)
    commands.add_parser("version", help="print version information")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"graphgate: error: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    server = {k: getattr(args, k, None) for k in ("host", "port", "workers")}
    server = {k: v for k, v in server.items() if v is not None}
    settings = load_settings()
    if server:
        # Command-line flags win over every other source; re-validate with them applied.
        merged = {**settings.server.model_dump(), **server}
        overrides["server"] = merged
        settings = load_settings(**overrides)
    return settings


def _preflight(settings: Settings) -> None:
    """Fail fast, before any server starts, on bad graph specs and an absent database.

    Also runs the migrations once here, before workers start, so workers find the
    tables in place (they would also serialise on an advisory lock if they raced).
    """
    from service.graphs.loader import check_spec
    from service.persistence import open_persistence

    for name, spec in settings.graph_specs.items():
        check_spec(name, spec)

    async def migrate() -> None:
        from service.security.authenticator import open_authenticator

        # Key files and JWT key material: a bad one is a configuration error (exit 2).
        authenticator = await open_authenticator(settings.auth)
        await authenticator.aclose()
        async with open_persistence(settings):
            pass

    asyncio.run(migrate())


def _prepare_metrics(settings: Settings) -> None:
    """Before anything imports prometheus_client (the graphs might): it picks its
    multiprocess file storage at import time, from PROMETHEUS_MULTIPROC_DIR."""
    import os
    import shutil

    from service.observability.prometheus import MULTIPROC_VAR, prepare_multiprocess_dir

    configured = settings.metrics.multiprocess_dir or os.environ.get(MULTIPROC_VAR)
    if settings.server.worker_count == 1 and not configured:
        return  # one process: plain in-memory metrics
    directory = prepare_multiprocess_dir(settings.metrics.multiprocess_dir)
    if not configured:
        # A directory we made; gone with the server. Workers are forked from here and
        # inherit this hook: only the process that made the directory removes it.
        owner = os.getpid()

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.set_inheritable(True)
    return sock


def _serve(settings: Settings) -> int:
    from service.app import announce_development_key, needs_development_key
    from service.security.api_keys import generate_key

    development_key = None
    if needs_development_key(settings):
        # Made once here, before gunicorn forks, so every worker accepts the same key.
        development_key = generate_key("dev")[1]
        announce_development_key(development_key)
    if settings.server.worker_count == 1:
        import uvicorn

        from service.app import create_app

        config = uvicorn.Config(
            create_app(settings, development_key=development_key),
            host=settings.server.host,
            port=settings.server.port,
            lifespan="on",
            log_config=None,
            server_header=False,
            # The app resolves X-Forwarded-For itself, from [server] trusted_proxies.
            proxy_headers=False,
            # uvicorn's access line prints the raw URL, query string included, where a
            # client may have put a key or token; graphgate logs requests itself.
            access_log=False,
            timeout_keep_alive=settings.server.keep_alive_s,
            timeout_graceful_shutdown=settings.server.graceful_timeout_s,
        )
        server = uvicorn.Server(config)
        sockets = [config.bind_socket()]
        if settings.metrics.enabled and settings.metrics.port is not None:
            # The internal scrape listener: same app, which serves only /metrics there.
            sockets.append(_listen(settings.server.host, settings.metrics.port))
        # uvicorn handles SIGTERM/SIGINT itself, then restores the handlers it found and
        # re-raises the signal. Finding these no-ops, a graceful stop exits 0 instead of
        # dying by signal (or printing a KeyboardInterrupt traceback).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: None)
        server.run(sockets=sockets)
        return 0 if server.started else EXIT_STARTUP
    from service.gunicorn_app import GraphgateGunicorn

    GraphgateGunicorn(settings, development_key=development_key).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":
        return run_keys_command(args)
    if args.command == "chat":
        from service.chat import run_chat

        return run_chat(args)
    if args.command == "version":
        import langgraph.version

        print(
            f"graphgate {__version__} (Python {platform.python_version()}, "
            f"langgraph {langgraph.version.__version__})"
        )
        return 0
    import psycopg

    from service.graphs.loader import GraphLoadError
    from service.persistence import StorageUnavailable

    try:
        settings = _settings(args)
        if args.command == "serve" and settings.metrics.enabled:
            _prepare_metrics(settings)
        if args.command in ("serve", "migrate"):
            # Before the preflight, so what it logs (key files, JWKS fetches) is formatted
            # and redacted like every other line.
            from service.observability.logging import configure_logging
            from service.observability.tracing import add_trace_ids

            configure_logging(settings, extra_processors=[add_trace_ids])
        if args.command == "config":
            print(json.dumps(public_view(settings), indent=2, default=str))
            return 0
        if args.command == "check-config":
            from service.security.audit import run_check_config

            return run_check_config(settings, fmt=args.fmt, strict=args.strict, out=sys.stdout)
        _preflight(settings)
    except (ConfigError, GraphLoadError) as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except StorageUnavailable as exc:
        return _fail(str(exc), EXIT_STARTUP)
    except psycopg.Error as exc:
        # Operator-facing: the database's own message says what to fix (auth, grants).
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _fail(f"database set-up failed: {type(exc).__name__}: {first_line}", EXIT_STARTUP)
    if args.command == "migrate":
        print(f"graphgate: {settings.database_kind} storage is migrated", file=sys.stderr)
        return 0
    return _serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
