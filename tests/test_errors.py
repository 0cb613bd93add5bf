"""Error handlers: every failure is problem+json with a code and request id, leaking nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from service.errors import (
    PROBLEM_TYPE,
    BodyTooLarge,
    InvalidRequest,
    ServiceUnavailable,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadNotFound,
    UnknownGraphError,
    install_error_handlers,
)
from service.middleware.request_id import RequestIdMiddleware

LEAKY = "password=hunter2 SELECT * FROM users"


class ChatBody(BaseModel):
    message: str = Field(min_length=1, max_length=10)
    count: int


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/thread")
    async def missing_thread() -> None:
        raise ThreadNotFound()

    @app.get("/busy")
    async def busy() -> None:
        raise ThreadBusyError()

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError(LEAKY)

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise StorageUnavailableError()

    @app.get("/unknown-graph")
    async def unknown_graph() -> None:
        raise UnknownGraphError("No graph named 'x' is served.")

    @app.get("/http-error")
    async def http_error() -> None:
        raise HTTPException(status_code=500, detail=LEAKY)

    @app.get("/slow-down")
    async def slow_down() -> None:
        raise HTTPException(status_code=429, detail="Rate limit exceeded: 5 per 1 minute")

    @app.post("/chat")
    async def chat(body: ChatBody) -> dict[str, Any]:
        return {"ok": True}

    return app


def request(
    method: str,
    path: str,
    *,
    app: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app or make_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, content=content, headers=headers)

    return asyncio.run(main())


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the common problem+json shape and return the body."""
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_TYPE
    body = response.json()
    assert body["type"] == f"urn:graphgate:problem:{code}"
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["request_id"], str)
    assert body["request_id"]
    assert response.headers["x-request-id"] == body["request_id"]
    return body


def test_thread_not_found_is_404() -> None:
    """ThreadNotFound becomes 404 thread_not_found."""
    body = assert_problem(request("GET", "/thread"), 404, "thread_not_found")
    assert body["title"] == "Thread not found"


def test_thread_busy_is_409_with_retry_after() -> None:
    """ThreadBusyError becomes 409 thread_busy with a Retry-After header and fixed detail."""
    response = request("GET", "/busy")
    body = assert_problem(response, 409, "thread_busy")
    assert response.headers["retry-after"] == "1"
    assert "Another run is in progress" in body["detail"]


def test_storage_unavailable_is_503_with_retry_after() -> None:
    """StorageUnavailableError becomes 503 storage_unavailable with Retry-After."""
    response = request("GET", "/unavailable")
    assert_problem(response, 503, "storage_unavailable")
    assert response.headers["retry-after"] == "5"


def test_service_error_detail_is_passed_through() -> None:
    """A ServiceError raised with a detail shows that (client-safe) detail."""
    body = assert_problem(request("GET", "/unknown-graph"), 422, "unknown_graph")
    assert body["detail"] == "No graph named 'x' is served."


def test_unhandled_exception_is_a_bare_500() -> None:
    """An unexpected exception gives 500 internal_error without its text or a traceback."""
    response = request("GET", "/crash")
    body = assert_problem(response, 500, "internal_error")
    text = response.text
    assert "hunter2" not in text
    assert "SELECT" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert "request id" in body["detail"]
    # Rendered outside the middleware that adds them, it still carries the hardening headers.
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_http_exception_500_detail_is_dropped() -> None:
    """A 5xx HTTPException's detail is never shown, in case it holds exception text."""
    response = request("GET", "/http-error")
    body = assert_problem(response, 500, "internal_server_error")
    assert "detail" not in body
    assert "hunter2" not in response.text


def test_http_exception_4xx_uses_the_status_phrase_as_code() -> None:
    """A 4xx HTTPException gets a code derived from its status phrase and keeps its detail."""
    body = assert_problem(request("GET", "/slow-down"), 429, "too_many_requests")
    assert body["detail"] == "Rate limit exceeded: 5 per 1 minute"


def test_validation_failure_is_422_with_loc_and_msg_only() -> None:
    """A schema violation gives 422 invalid_request listing loc/msg but never the input."""
    response = request(
        "POST",
        "/chat",
        content=b'{"message": "password=hunter2 is far too long", "count": "many"}',
        headers={"content-type": "application/json"},
    )
    body = assert_problem(response, 422, "invalid_request")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert len(errors) == 2
    for error in errors:
        assert set(error) == {"loc", "msg"}
        assert isinstance(error["msg"], str)
        assert all(isinstance(part, str) for part in error["loc"])
    assert {tuple(error["loc"]) for error in errors} == {("body", "message"), ("body", "count")}
    assert "hunter2" not in response.text
    assert "many" not in response.text


def test_missing_body_field_is_422() -> None:
    """A missing required field is reported with its location."""
    response = request(
        "POST", "/chat", content=b'{"message": "hi"}', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422, "invalid_request")
    assert body["errors"] == [{"loc": ["body", "count"], "msg": "Field required"}]


def test_malformed_json_is_400() -> None:
    """A body that is not JSON gives 400 malformed_json without echoing it."""
    response = request(
        "POST",
        "/chat",
        content=b'{"message": "hunter2", ',
        headers={"content-type": "application/json"},
    )
    body = assert_problem(response, 400, "malformed_json")
    assert "errors" not in body
    assert "hunter2" not in response.text


def test_unknown_route_is_404_problem() -> None:
    """An unknown path gives a 404 not_found problem."""
    body = assert_problem(request("GET", "/no/such/route"), 404, "not_found")
    assert body["title"] == "Not Found"
    assert "detail" not in body


def test_wrong_method_is_405_problem() -> None:
    """A known path with the wrong method gives a 405 problem with Allow."""
    response = request("DELETE", "/thread")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/thread", 404, "thread_not_found"),
        ("/crash", 500, "internal_error"),
        ("/no/such/route", 404, "not_found"),
    ],
)
def test_request_id_from_middleware_is_used(path: str, status: int, code: str) -> None:
    """Behind RequestIdMiddleware, every problem carries the request's own id."""
    app = make_app()
    app.add_middleware(RequestIdMiddleware)
    response = request("GET", path, app=app, headers={"x-request-id": "req-123"})
    body = assert_problem(response, status, code)
    assert body["request_id"] == "req-123"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ThreadNotFound, 404, "thread_not_found"),
        (ThreadBusyError, 409, "thread_busy"),
        (UnknownGraphError, 422, "unknown_graph"),
        (InvalidRequest, 422, "invalid_request"),
        (ServiceUnavailable, 503, "unavailable"),
        (StorageUnavailableError, 503, "storage_unavailable"),
    ],
)
def test_service_error_classes_carry_status_and_code(
    error: type[Exception], status: int, code: str
) -> None:
    """Each ServiceError subclass declares its HTTP status and machine-readable code."""
    assert (error.status, error.code) == (status, code)  # type: ignore[attr-defined]


def test_body_too_large_is_an_http_exception_with_its_own_code() -> None:
    """BodyTooLarge must be an HTTPException, or FastAPI turns it into a generic 400."""
    from fastapi import HTTPException

    exc = BodyTooLarge("too big")
    assert isinstance(exc, HTTPException)
    assert (exc.status_code, exc.code) == (413, "body_too_large")


def test_http_error_codes_are_plain_identifiers() -> None:
    """Codes derived from status phrases are lower-case words joined by underscores."""
    import re


    app = FastAPI()
    install_error_handlers(app)

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/teapot")

    response = asyncio.run(call())
    assert response.status_code == 418
    assert re.fullmatch(r"[a-z0-9_]+", response.json()["code"])
