"""`create_app(settings)`: lifespan resources, the ordered middleware list, the routers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import __version__
from service.api import health, v1, v1_threads
from service.api import metrics as metrics_api
from service.api.agent import assistants
from service.api.agent import run_control as agent_run_control
from service.api.agent import runs as agent_runs
from service.api.agent import threads as agent_threads
from service.errors import install_error_handlers
from service.graphs.loader import load_graphs
from service.lifecycle import Lifecycle
from service.middleware.access_log import AccessLogMiddleware
from service.middleware.allowed_hosts import AllowedHostsMiddleware
from service.middleware.authentication import AUTHENTICATOR_STATE_KEY, AuthenticationMiddleware
from service.middleware.body_limit import BodySizeLimitMiddleware
from service.middleware.cors import CorsMiddleware
from service.middleware.metrics import PrometheusMiddleware, RouteTemplates
from service.middleware.metrics_listener import MetricsListenerMiddleware
from service.middleware.rate_limit import RATE_LIMITS_STATE_KEY, RateLimitMiddleware
from service.middleware.request_id import RequestIdMiddleware
from service.middleware.security_headers import SecurityHeadersMiddleware
from service.observability.metrics import Metrics
from service.observability.prometheus import new_registry
from service.observability.samplers import CheckpointerTimer, sample_periodically
from service.observability.stream_metrics import RunMetrics
from service.observability.tracing import (
    FASTAPI_TELEMETRY_OFF,
    build_tracer_provider,
    instrument_app,
    shutdown_tracer_provider,
)
from service.persistence import open_persistence
from service.persistence.checkpointer import STORAGE_ERRORS
from service.resources import Resources
from service.security.api_keys import KeyStore, development_key_store, generate_key
from service.security.authenticator import open_authenticator
from service.security.paths import PROBE_PATHS, public_paths, unlimited_paths
from service.security.rate_limits import RateLimits
from service.security.stream_slots import open_stream_slots
from service.settings import Settings
from service.streaming.executor import RunExecutor
from service.streaming.run_manager import RunManager, purge_run_events
from service.streaming.send_watchdog import SendWatchdog, check_interval

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
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the ASGI app. Nothing is opened until the lifespan starts.

    `development_key`: the ephemeral key to accept when `needs_development_key`; the CLI
    makes it once, before gunicorn forks, so every worker accepts the same key.
    `api_keys`: the keys file as the gunicorn master parsed it; without it the app reads
    `[auth] api_keys_file` itself (and re-reads it on SIGHUP).
    `registry`: where the metrics are defined (tests pass a fresh one).
    `tracer_provider`: OpenTelemetry; default from `[telemetry]` (None: tracing off).
    """
    lifecycle = lifecycle or Lifecycle()
    provider = tracer_provider or build_tracer_provider(settings.telemetry)
    metrics = Metrics(registry or new_registry())
    metrics.set_build_info(__version__)
    if needs_development_key(settings) and development_key is None:
        development_key = generate_key("dev")[1]
        announce_development_key(development_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        keys = development_key_store(development_key) if development_key else api_keys
        async with contextlib.AsyncExitStack() as stack:
            authenticator = await open_authenticator(settings.auth, keys=keys)
            stack.push_async_callback(authenticator.aclose)
            rate_limits = RateLimits(settings.rate_limit, metrics=metrics)
            stream_slots = open_stream_slots(settings.rate_limit)
            stack.push_async_callback(stream_slots.aclose)
            persistence = await stack.enter_async_context(open_persistence(
                settings, observer=CheckpointerTimer(metrics.checkpointer_duration)))
            sampler = await stack.enter_async_context(anyio.create_task_group())
            sampler.start_soon(sample_periodically, metrics, persistence.pool_stats)
            sampler.start_soon(rate_limits.sweep_periodically)
            stack.callback(sampler.cancel_scope.cancel)
            graphs = await load_graphs(settings, persistence.checkpointer)
            executor = RunExecutor(persistence.leases, settings.runs, settings.streaming,
                                   observer=RunMetrics(metrics), tracer_provider=provider)
            sampler.start_soon(executor.keep_leases)
            # Shutdown (a signal, or the server stopping) starts the drain: runs get
            # [server] drain_timeout_s to finish, then end cleanly with a retry hint.
            loop = asyncio.get_running_loop()
            drains: set[asyncio.Future[None]] = set()

            def start_drain() -> None:
                def spawn() -> None:
                    drains.add(asyncio.ensure_future(
                        executor.drain(settings.server.drain_s)))

                loop.call_soon_threadsafe(spawn)

            lifecycle.on_drain(start_drain)
            restore_signals = lifecycle.chain_signal_handlers()
            # SIGHUP re-reads the API keys file (revocations apply without a restart).
            stack.callback(lifecycle.on_reload(authenticator.reload))
            run_manager = RunManager(persistence.runs, persistence.events, settings.runs,
                                     settings.streaming)
            sampler.start_soon(purge_run_events, persistence.events, settings.runs)
            send_watchdog = SendWatchdog()
            sampler.start_soon(send_watchdog.run, check_interval(
                settings.streaming.send_timeout_s, settings.streaming.heartbeat_interval_s))
            resources = Resources(settings, persistence, graphs, executor, lifecycle,
                                  authenticator, rate_limits, stream_slots, metrics, run_manager,
                                  send_watchdog)
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
                    # Background runs record how they ended before the store closes.
                    await run_manager.aclose()
                await shutdown_tracer_provider(provider)

    route_templates = RouteTemplates()
    app = FastAPI(
        title="graphgate",
        version=__version__,
        summary="LangGraph graphs over HTTP with Server-Sent Events and durable threads.",
        lifespan=lifespan,
        middleware=middleware_stack(settings, metrics, route_templates),
        debug=False,  # never render tracebacks to clients
        # FastAPI's own telemetry would record query strings and exception text; graphgate
        # traces through opentelemetry-instrumentation-fastapi with redaction instead.
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    install_error_handlers(
        app, storage_errors=STORAGE_ERRORS,
        on_storage_error=metrics.storage_errors.labels("checkpointer").inc,
    )
    routers = [health.router, v1.router, v1_threads.router,
               # The LangGraph Agent Server protocol, for langgraph-sdk and agent-chat-ui.
               assistants.router, agent_threads.router, agent_runs.router,
               agent_run_control.router]
    if settings.metrics.enabled:
        routers.append(metrics_api.router)
    for router in routers:
        app.include_router(router)
    if provider is not None:
        instrument_app(app, provider)
    # Label values for requests refused before routing (401, 413, 429…).
    route_templates.extend(
        [route.path for router in routers for route in router.routes if hasattr(route, "path")]
        + [path for route in app.routes if isinstance(path := getattr(route, "path", None), str)])
    return app


def middleware_stack(settings: Settings, metrics: Metrics,
                     route_templates: RouteTemplates) -> list[Middleware]:
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
    if settings.metrics.enabled:
        # Metrics outside everything that can refuse, so refusals are counted too.
        stack.append(Middleware(PrometheusMiddleware, metrics=metrics, routes=route_templates))
    if settings.logging.access_log:
        # One line per request or finished stream. Inside request id (the line carries
        # it) and proxy headers (the real client ip); outside everything that can refuse,
        # so 400s, 401s, 413s and 429s get a line too.
        stack.append(Middleware(AccessLogMiddleware, route_of=route_templates))
    if settings.metrics.enabled and settings.metrics.port is not None:
        # The scrape port serves /metrics (and probes) only, never the API.
        stack.append(Middleware(MetricsListenerMiddleware, port=settings.metrics.port))
    if settings.http.security_headers:
        # Outside everything that can answer, so refusals get the headers too.
        stack.append(Middleware(SecurityHeadersMiddleware,
                                hsts_max_age_s=settings.http.hsts_max_age_s,
                                hsts_include_subdomains=settings.http.hsts_include_subdomains))
    if settings.http.allowed_hosts:
        # Inside the metrics listener, which keeps everything but /metrics and the
        # probes off the metrics port; those two reach pods by address (see the module).
        metrics_port = settings.metrics.port if settings.metrics.enabled else None
        stack.append(Middleware(AllowedHostsMiddleware, allowed_hosts=settings.http.allowed_hosts,
                                exempt_paths=PROBE_PATHS, exempt_port=metrics_port))
    if settings.cors.enabled:
        # Outside auth: preflights carry no credentials, and a browser can read a 401 or
        # 429 only if it carries the CORS headers.
        stack.append(Middleware(CorsMiddleware, settings=settings.cors))
    # Size limit before anything reads the body.
    stack.append(Middleware(BodySizeLimitMiddleware, max_bytes=settings.limits.max_body_bytes))
    # Authentication before the limiter, which keys on the principal it finds.
    stack.append(Middleware(AuthenticationMiddleware, public_paths=public_paths(settings),
                            metrics=metrics))
    if settings.rate_limit.enabled:
        stack.append(Middleware(RateLimitMiddleware, exempt_paths=unlimited_paths(),
                                metrics=metrics))
    return stack
