"""`create_app(settings)`: lifespan resources, the ordered middleware list, the routers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import __version__
from service.api import health, v1, v1_threads
from service.errors import install_error_handlers
from service.graphs.loader import load_graphs
from service.lifecycle import Lifecycle
from service.middleware.allowed_hosts import AllowedHostsMiddleware
from service.middleware.authentication import AUTHENTICATOR_STATE_KEY, AuthenticationMiddleware
from service.middleware.body_limit import BodySizeLimitMiddleware
from service.middleware.cors import CorsMiddleware
from service.middleware.rate_limit import RATE_LIMITS_STATE_KEY, RateLimitMiddleware
from service.middleware.request_id import RequestIdMiddleware
from service.middleware.security_headers import SecurityHeadersMiddleware
from service.persistence import open_persistence
from service.persistence.checkpointer import STORAGE_ERRORS
from service.resources import Resources
from service.security.api_keys import KeyStore, development_key_store, generate_key
from service.security.authenticator import open_authenticator
from service.security.paths import public_paths, unlimited_paths
from service.security.rate_limits import RateLimits
from service.security.stream_slots import open_stream_slots
from service.settings import Settings
from service.streaming.executor import RunExecutor

SHUTDOWN_RELEASE_WAIT_S = 5.0


def needs_development_key(settings: Settings) -> bool:
    """Development with auth on but no method configured runs on an ephemeral API key."""
    return settings.env == "development" and settings.auth.enabled and not settings.auth.methods


def announce_development_key(key: str) -> None:
    """Print the ephemeral development key once, to the terminal (never to the log)."""
    print(
        "graphgate: development API key (changes on every start; send it as "
        f"X-API-Key):\n\n    {key}\n",
        file=sys.stderr,
        flush=True,
    )


def create_app(
    settings: Settings, *, lifecycle: Lifecycle | None = None,
    development_key: str | None = None, api_keys: KeyStore | None = None,
) -> FastAPI:
    """Build the ASGI app. Nothing is opened until the lifespan starts.

    `development_key`: the ephemeral key to accept when `needs_development_key`; the CLI
    makes it once, before gunicorn forks, so every worker accepts the same key.
    `api_keys`: the keys file as the gunicorn master parsed it; without it the app reads
    `[auth] api_keys_file` itself (and re-reads it on SIGHUP).
    """
    lifecycle = lifecycle or Lifecycle()
    if needs_development_key(settings) and development_key is None:
        development_key = generate_key("dev")[1]
        announce_development_key(development_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        keys = development_key_store(development_key) if development_key else api_keys
        async with contextlib.AsyncExitStack() as stack:
            authenticator = await open_authenticator(settings.auth, keys=keys)
            stack.push_async_callback(authenticator.aclose)
            rate_limits = RateLimits(settings.rate_limit)
            stream_slots = open_stream_slots(settings.rate_limit)
            stack.push_async_callback(stream_slots.aclose)
            persistence = await stack.enter_async_context(open_persistence(settings))
            graphs = await load_graphs(settings, persistence.checkpointer)
            executor = RunExecutor(persistence.leases, settings.runs, settings.streaming)
            restore_signals = lifecycle.chain_signal_handlers()
            # SIGHUP re-reads the API keys file (revocations apply without a restart).
            stack.callback(lifecycle.on_reload(authenticator.reload))
            resources = Resources(settings, persistence, graphs, executor, lifecycle,
                                  authenticator, rate_limits, stream_slots)
            try:
                yield {
                    "resources": resources,
                    AUTHENTICATOR_STATE_KEY: authenticator,
                    RATE_LIMITS_STATE_KEY: rate_limits,
                }
            finally:
                lifecycle.begin_shutdown()
                restore_signals()
                # Cancelled streams release their leases in shielded clean-ups that may
                # still be running; let them finish before the store closes under them.
                with anyio.move_on_after(SHUTDOWN_RELEASE_WAIT_S):
                    await executor.wait_idle()

    app = FastAPI(
        title="graphgate",
        version=__version__,
        summary="LangGraph graphs over HTTP with Server-Sent Events and durable threads.",
        lifespan=lifespan,
        middleware=middleware_stack(settings),
        debug=False,  # never render tracebacks to clients
    )
    install_error_handlers(app, storage_errors=STORAGE_ERRORS)
    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(v1_threads.router)
    return app


def middleware_stack(settings: Settings) -> list[Middleware]:
    """The ordered middleware list, outermost first; each entry says why it sits there.

    Starlette adds its ServerErrorMiddleware (the 500 handler) outside all of these and
    its ExceptionMiddleware (the 4xx handlers) inside them, next to the routes.
    """
    stack = [
        # Request id first, so every response (errors, 401s, 413s, 429s included) carries
        # it and every log line of the request is bound to it.
        Middleware(RequestIdMiddleware),
        # The client address, from X-Forwarded-For only when the socket peer is a trusted
        # proxy; everything after (logs, anonymous rate limits) sees the real client.
        Middleware(ProxyHeadersMiddleware, trusted_hosts=settings.server.trusted_proxies),
    ]
    if settings.http.security_headers:
        # Outside everything that can answer, so refusals get the headers too.
        stack.append(Middleware(SecurityHeadersMiddleware,
                                hsts_max_age_s=settings.http.hsts_max_age_s,
                                hsts_include_subdomains=settings.http.hsts_include_subdomains))
    if settings.http.allowed_hosts:
        stack.append(Middleware(AllowedHostsMiddleware, allowed_hosts=settings.http.allowed_hosts))
    if settings.cors.enabled:
        # Outside auth: preflights carry no credentials, and a browser can read a 401 or
        # 429 only if it carries the CORS headers.
        stack.append(Middleware(CorsMiddleware, settings=settings.cors))
    # Size limit before anything reads the body.
    stack.append(Middleware(BodySizeLimitMiddleware, max_bytes=settings.limits.max_body_bytes))
    # Authentication before the limiter, which keys on the principal it finds.
    stack.append(Middleware(AuthenticationMiddleware, public_paths=public_paths(settings)))
    if settings.rate_limit.enabled:
        stack.append(Middleware(RateLimitMiddleware, exempt_paths=unlimited_paths()))
    return stack
