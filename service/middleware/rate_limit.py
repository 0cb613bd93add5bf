"""Apply the per-principal request limit to every request except the probes.

Sits after authentication (it keys on the principal) and before the routes. A refused
request gets 429 problem+json with Retry-After and X-RateLimit-*; an allowed one gets the
X-RateLimit-* headers on its response start, event streams included (the headers are
added to the first message only, nothing is buffered).
"""

from __future__ import annotations

from collections.abc import Collection

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import problem
from service.middleware.response_hooks import on_response_start
from service.observability.metrics import Metrics
from service.security.rate_limits import RateLimits

log = structlog.get_logger("graphgate.rate_limit")

RATE_LIMITS_STATE_KEY = "rate_limits"


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, exempt_paths: Collection[str],
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.exempt_paths = frozenset(exempt_paths)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        limits: RateLimits = scope["state"][RATE_LIMITS_STATE_KEY]
        request = Request(scope)
        limiter = limits.requests
        decision, extra = await limiter.check_with_headers(request, limits.request_limit(request))
        if decision.verdict == "limited":
            headers = dict(extra)
            headers.setdefault("retry-after", "1")
            log.info("rate_limited", limiter=limiter.name, path=scope["path"])
            if self.metrics is not None:
                self.metrics.rate_limited.labels("requests").inc()
            response = problem(request, 429, "rate_limited", "Too many requests",
                               "The rate limit for these credentials was reached; retry "
                               "after the number of seconds in Retry-After.", headers=headers)
            await response(scope, receive, send)
            return
        if decision.verdict == "unavailable":
            if self.metrics is not None:
                self.metrics.storage_errors.labels("rate_limit").inc()
            response = problem(request, 503, "rate_limit_unavailable", "Service unavailable",
                               "Rate limits cannot be checked right now; try again shortly.",
                               headers={"retry-after": "5"})
            await response(scope, receive, send)
            return
        if not extra:
            await self.app(scope, receive, send)
            return

        def add_limits(message: Message) -> None:
            headers = MutableHeaders(scope=message)
            for name, value in extra.items():
                headers.setdefault(name, value)

        await self.app(scope, receive, on_response_start(scope, send, add_limits))
