"""Hardening headers on every response, errors and event streams included.

The API serves JSON and event streams, never pages, so browsers are told not to sniff
types, frame it, leak the URL in referrers or cache responses (they may hold
conversation state). HSTS is opt-in: it is only right once every client uses HTTPS.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import HARDENING_HEADERS
from service.middleware.response_hooks import on_response_start


class SecurityHeadersMiddleware:
    def __init__(
        self, app: ASGIApp, *, hsts_max_age_s: int = 0, hsts_include_subdomains: bool = False
    ) -> None:
        self.app = app
        headers = dict(HARDENING_HEADERS)
        if hsts_max_age_s > 0:
            hsts = f"max-age={hsts_max_age_s}"
            headers["strict-transport-security"] = (
                hsts + "; includeSubDomains" if hsts_include_subdomains else hsts
            )
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        await self.app(scope, receive, on_response_start(scope, send, self._add_headers))

    def _add_headers(self, message: Message) -> None:
        headers = MutableHeaders(scope=message)
        # setdefault: a response's own Cache-Control (streams set theirs) wins.
        for name, value in self.headers.items():
            headers.setdefault(name, value)
