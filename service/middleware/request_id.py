"""Give every request an id, echo it in `X-Request-ID`, and bind it for logs."""

from __future__ import annotations

import re
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware.response_hooks import host_response_hooks, on_response_start

# A client-supplied id is kept only if it is short and boring; anything else (log
# injection, huge values) is replaced by a fresh one.
_VALID = re.compile(r"[A-Za-z0-9-]{1,64}")
HEADER = b"x-request-id"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == HEADER:
                candidate = value.decode("latin-1")
                if _VALID.fullmatch(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        encoded = request_id.encode()

        def with_id(message: Message) -> Message:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
            headers.append((HEADER, encoded))
            return {**message, "headers": headers}

        # Outermost of graphgate's middlewares, so it hosts the response hooks of those
        # inside it (see response_hooks); its own hook, registered first, runs last.
        send = host_response_hooks(scope, send)
        send = on_response_start(scope, send, with_id)
        await self.app(scope, receive, send)
