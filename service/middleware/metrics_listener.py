"""On the internal metrics port (`[metrics] port`) serve `/metrics` and nothing else.

The API must not become reachable through the scrape port, which is typically opened to
the monitoring network without the proxy's protections in front of it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import problem

ALLOWED = frozenset({"/metrics", "/healthz", "/readyz"})


class MetricsListenerMiddleware:
    def __init__(self, app: ASGIApp, *, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (scope["type"] == "http" and server is not None and server[1] == self.port
                and scope["path"] not in ALLOWED):
            response = problem(Request(scope), 404, "not_found", "Not Found")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
