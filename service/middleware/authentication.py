"""Authenticate every request before it reaches the rate limiter and the routes.

The verified `Principal` goes into the ASGI scope (`scope["state"]["principal"]`), where
the rate limiter keys on it and routes check scopes and thread ownership. Refusals are
401 problem+json with a `WWW-Authenticate` challenge and one fixed body, whatever the
reason: the reason goes to the log (never the credential itself), so a caller cannot
tell an unknown key id from a wrong secret, or an expired token from a forged one.
"""

from __future__ import annotations

from collections.abc import Collection

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import problem
from service.observability.metrics import Metrics
from service.security.authenticator import ANONYMOUS, Authenticator
from service.security.principal import SCOPE_STATE_KEY, AuthFailure

log = structlog.get_logger("graphgate.auth")

AUTHENTICATOR_STATE_KEY = "authenticator"
CHALLENGE = 'Bearer realm="graphgate"'
INVALID_TOKEN_CHALLENGE = 'Bearer realm="graphgate", error="invalid_token"'  # noqa: S105


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, *, public_paths: Collection[str],
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.public_paths = frozenset(public_paths)
        self.failures = metrics.auth_failures if metrics is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # No WebSocket route exists; should one appear, it is closed, not served
            # unauthenticated (1008: policy violation).
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.public_paths:
            # Probes never fail on credentials, and cost no verification.
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        authenticator: Authenticator = state[AUTHENTICATOR_STATE_KEY]
        try:
            principal = await authenticator.authenticate(scope["headers"])
        except AuthFailure as failure:
            log.warning("auth_failed", reason=failure.reason, path=scope["path"])
            if self.failures is not None:
                self.failures.labels(failure.reason).inc()
            await _refuse(scope, receive, send, INVALID_TOKEN_CHALLENGE)
            return
        if principal is None:
            if authenticator.required:
                log.info("auth_missing", path=scope["path"])
                if self.failures is not None:
                    self.failures.labels("missing").inc()
                await _refuse(scope, receive, send, CHALLENGE)
                return
            principal = ANONYMOUS
        state[SCOPE_STATE_KEY] = principal
        structlog.contextvars.bind_contextvars(principal=principal.identity)
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, challenge: str) -> None:
    response = problem(
        Request(scope), 401, "unauthorized", "Unauthorized",
        "Missing or invalid credentials: send an API key in X-API-Key or a bearer token.",
        headers={"WWW-Authenticate": challenge},
    )
    await response(scope, receive, send)
