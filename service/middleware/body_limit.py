"""Refuse request bodies over a byte limit with 413, chunked bodies included.

uvicorn accepts bodies of any size by default; a declared Content-Length over the limit
is refused before reading, and an undeclared (chunked) body is counted as it arrives.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLarge, problem


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _refuse(scope, receive, send, self.max_bytes)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the app's body read; the error handlers turn it into 413.
                    raise BodyTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
            return message

        await self.app(scope, counting_receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
    response = problem(Request(scope), 413, BodyTooLarge.code, BodyTooLarge.title,
                       f"The request body exceeds {max_bytes} bytes.")
    await response(scope, receive, send)
