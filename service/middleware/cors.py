"""Starlette's CORSMiddleware, with refused preflights in the service's error shape.

Allowed origins come from `[cors]`; Settings already refuse `*` with credentials and the
`null` origin. CORS sits outside authentication, so preflights need no credentials and
401/429 answers still carry the CORS headers a browser needs to read them.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import problem
from service.settings import CorsSettings

ALLOW_METHODS = ("GET", "POST", "PATCH", "DELETE")
# Headers a browser script may read from our responses.
EXPOSE_HEADERS = ("Retry-After", "X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                  "X-RateLimit-Reset", "WWW-Authenticate")
_DROP = frozenset({"content-length", "content-type"})


class CorsMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, *, settings: CorsSettings) -> None:
        super().__init__(
            app,
            allow_origins=settings.allow_origins,
            allow_origin_regex=settings.allow_origin_regex,
            allow_credentials=settings.allow_credentials,
            allow_methods=ALLOW_METHODS,
            allow_headers=settings.allow_headers,
            expose_headers=EXPOSE_HEADERS,
            max_age=settings.max_age_s,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code == 400:
                    what = bytes(response.body).decode().removeprefix("Disallowed CORS ")
                    keep = {k: v for k, v in response.headers.items() if k not in _DROP}
                    response = problem(Request(scope), 400, "cors_rejected",
                                       "CORS preflight rejected",
                                       f"This origin, method or header is not allowed ({what}).",
                                       headers=keep)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
