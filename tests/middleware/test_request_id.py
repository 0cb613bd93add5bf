"""RequestIdMiddleware: keep a boring client id, replace anything else, expose it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.middleware.request_id import RequestIdMiddleware

FRESH_ID = re.compile(r"[0-9a-f]{32}")


async def echo_state(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "scope_state": request.scope["state"]["request_id"],
            "log_context": structlog.contextvars.get_contextvars().get("request_id"),
        },
        # A handler that sets its own X-Request-ID must not produce a duplicate header.
        headers={"x-request-id": "from-the-handler"},
    )


def make_app() -> RequestIdMiddleware:
    return RequestIdMiddleware(Starlette(routes=[Route("/", echo_state)]))


def get(headers: list[tuple[bytes, bytes]] | None = None) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/", headers=headers or [])

    return asyncio.run(main())


def test_valid_incoming_id_is_echoed() -> None:
    """A short alphanumeric-and-dash X-Request-ID is kept and echoed back."""
    response = get([(b"X-Request-ID", b"client-Req-42")])
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["client-Req-42"]
    assert response.json()["scope_state"] == "client-Req-42"


def test_sixty_four_characters_is_still_valid() -> None:
    """An id of exactly 64 allowed characters is kept."""
    rid = "a" * 64
    assert get([(b"X-Request-ID", rid.encode())]).headers["x-request-id"] == rid


def test_missing_id_gets_a_fresh_one() -> None:
    """Without an X-Request-ID the request gets a fresh 32-hex-digit id."""
    response = get()
    rid = response.headers["x-request-id"]
    assert FRESH_ID.fullmatch(rid)
    assert response.json()["scope_state"] == rid


@pytest.mark.parametrize(
    "bad",
    [
        b"a" * 65,
        b"<script>alert(1)</script>",
        b"has space",
        b"semi;colon",
        b"under_score",
        b"dot.ted",
        b"",
        b"caf\xe9",
    ],
)
def test_invalid_incoming_id_is_replaced(bad: bytes) -> None:
    """A too-long, empty or odd-character X-Request-ID is replaced by a fresh 32-hex id."""
    response = get([(b"X-Request-ID", bad)])
    rid = response.headers["x-request-id"]
    assert rid.encode() != bad
    assert FRESH_ID.fullmatch(rid)
    assert response.json()["scope_state"] == rid


def test_fresh_ids_differ_between_requests() -> None:
    """Two requests without an id get different ids."""
    assert get().headers["x-request-id"] != get().headers["x-request-id"]


def test_response_carries_exactly_one_request_id_header() -> None:
    """The middleware's id replaces any X-Request-ID the app set itself."""
    response = get([(b"X-Request-ID", b"abc")])
    assert response.headers.get_list("x-request-id") == ["abc"]


def test_id_is_bound_to_the_log_context() -> None:
    """The id is bound in structlog's context variables for the request's log lines."""
    response = get([(b"X-Request-ID", b"log-me")])
    assert response.json()["log_context"] == "log-me"


def test_id_is_in_scope_state_for_inner_apps() -> None:
    """The id is placed in scope["state"]["request_id"] before the inner app runs."""
    seen: dict[str, Any] = {}

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope["state"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestIdMiddleware(inner))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/", headers={"X-Request-ID": "inner-1"})

    response = asyncio.run(main())
    assert seen == {"request_id": "inner-1"}
    assert response.headers["x-request-id"] == "inner-1"


def test_non_http_scopes_pass_through() -> None:
    """Lifespan and other non-HTTP scopes reach the app untouched."""
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    scope: dict[str, Any] = {"type": "lifespan"}

    async def receive() -> dict[str, Any]:  # pragma: no cover - never called
        return {}

    async def send(message: dict[str, Any]) -> None:  # pragma: no cover - never called
        pass

    asyncio.run(RequestIdMiddleware(inner)(scope, receive, send))
    assert seen == [{"type": "lifespan"}]
