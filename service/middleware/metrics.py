"""HTTP request metrics: count, latency and in-flight, labelled by route template.

Outside everything that can refuse a request, so 401s, 413s and 429s are counted too.
The label is the route's template (`/v1/threads/{thread_id}/state`), never the raw path:
requests the router never saw (refused earlier) are matched against the routes here, and
paths no route matches are all `unmatched`, so junk URLs cannot grow the series count.
Event streams are left out of the latency histogram: their length is the conversation's,
and the `stream_*` metrics describe them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware.response_hooks import on_response_start
from service.observability.metrics import Metrics

UNMATCHED = "unmatched"
# Clients can send any method token; anything else is one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RouteTemplates:
    """Finds the route template for a path the router never saw (refused earlier)."""

    def __init__(self, templates: Iterable[str] = ()) -> None:
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        self.extend(templates)

    def extend(self, templates: Iterable[str]) -> None:
        for template in templates:
            regex, _, _ = compile_path(template)
            self.patterns.append((regex, template))

    def __call__(self, scope: Scope) -> str:
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        for regex, template in self.patterns:
            if regex.match(scope["path"]):
                return template
        return UNMATCHED


class PrometheusMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: RouteTemplates,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500
        streaming = False

        def observe_start(message: Message) -> None:
            nonlocal status, streaming
            status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"content-type" and value.startswith(b"text/event-stream"):
                    streaming = True
                    break

        in_flight = self.metrics.http_in_flight
        in_flight.inc()
        try:
            await self.app(scope, receive, on_response_start(scope, send, observe_start))
        finally:
            in_flight.dec()
            route = self.routes(scope)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.http_requests.labels(method, route, f"{status // 100}xx").inc()
            if not streaming:
                self.metrics.http_duration.labels(method, route).observe(self.clock() - started)
