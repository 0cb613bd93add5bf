"""`create_app(settings)`: lifespan resources, the ordered middleware list, the routers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.middleware import Middleware

from service import __version__
from service.api import health, v1
from service.errors import install_error_handlers
from service.graphs.loader import load_graphs
from service.lifecycle import Lifecycle
from service.middleware.body_limit import BodySizeLimitMiddleware
from service.middleware.request_id import RequestIdMiddleware
from service.persistence import open_persistence
from service.persistence.checkpointer import STORAGE_ERRORS
from service.resources import Resources
from service.settings import Settings
from service.streaming.executor import RunExecutor

SHUTDOWN_RELEASE_WAIT_S = 5.0


def create_app(settings: Settings, *, lifecycle: Lifecycle | None = None) -> FastAPI:
    """Build the ASGI app. Nothing is opened until the lifespan starts."""
    lifecycle = lifecycle or Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_persistence(settings) as persistence:
            graphs = await load_graphs(settings, persistence.checkpointer)
            executor = RunExecutor(persistence.leases, settings.runs, settings.streaming)
            restore_signals = lifecycle.chain_signal_handlers()
            try:
                yield {
                    "resources": Resources(settings, persistence, graphs, executor, lifecycle)
                }
            finally:
                lifecycle.begin_shutdown()
                restore_signals()
                # Cancelled streams release their leases in shielded clean-ups that may
                # still be running; let them finish before the store closes under them.
                with anyio.move_on_after(SHUTDOWN_RELEASE_WAIT_S):
                    await executor.wait_idle()

    # Outermost first. Starlette adds its ServerErrorMiddleware (our 500 handler) outside
    # all of these and its ExceptionMiddleware (4xx handlers) inside them.
    middleware = [
        # Request id first, so every response (errors and 413s included) carries it and
        # every log line of the request is bound to it.
        Middleware(RequestIdMiddleware),
        # Size limit before anything reads the body.
        Middleware(BodySizeLimitMiddleware, max_bytes=settings.limits.max_body_bytes),
    ]
    app = FastAPI(
        title="graphgate",
        version=__version__,
        summary="LangGraph graphs over HTTP with Server-Sent Events and durable threads.",
        lifespan=lifespan,
        middleware=middleware,
        debug=False,  # never render tracebacks to clients
    )
    install_error_handlers(app, storage_errors=STORAGE_ERRORS)
    app.include_router(health.router)
    app.include_router(v1.router)
    return app
