"""BodySizeLimitMiddleware: 413 problem+json for declared and chunked bodies over the limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from service.errors import PROBLEM_TYPE, install_error_handlers
from service.middleware.body_limit import BodySizeLimitMiddleware
from service.middleware.request_id import RequestIdMiddleware

LIMIT = 1024


class Message(BaseModel):
    text: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=LIMIT)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, Any]:
        """Reads the JSON body itself."""
        body = await request.json()
        return {"chars": len(body["text"])}

    @app.post("/model")
    async def model(body: Message) -> dict[str, Any]:
        """Lets FastAPI read and validate the body, as the service's own routes do."""
        return {"chars": len(body.text)}

    return app


def json_body(chars: int) -> bytes:
    return json.dumps({"text": "a" * chars}).encode()


async def chunked(body: bytes, chunk_size: int = 256) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk_size):
        yield body[start : start + chunk_size]


def post(path: str, content: Any, app: Any = None) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app or make_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(
                path, content=content, headers={"content-type": "application/json"}
            )

    return asyncio.run(main())


def assert_body_too_large(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_TYPE
    problem = response.json()
    assert problem["code"] == "body_too_large"
    assert problem["status"] == 413
    assert problem["type"] == "urn:graphgate:problem:body_too_large"
    assert isinstance(problem["request_id"], str)
    assert problem["request_id"]
    assert response.headers["x-request-id"] == problem["request_id"]
    return problem


@pytest.mark.parametrize("path", ["/raw", "/model"])
def test_declared_content_length_over_limit_is_refused(path: str) -> None:
    """A Content-Length over the limit gets 413 problem+json before the body is read."""
    body = json_body(2 * LIMIT)
    assert len(body) > LIMIT
    problem = assert_body_too_large(post(path, body))
    assert str(LIMIT) in problem["detail"]


def test_chunked_body_over_limit_is_refused() -> None:
    """A body without Content-Length is counted as it arrives and refused with 413."""
    assert_body_too_large(post("/raw", chunked(json_body(2 * LIMIT))))


def test_chunked_body_over_limit_is_refused_for_model_routes() -> None:
    """A chunked over-limit body sent to a route with a pydantic body model also gets 413."""
    assert_body_too_large(post("/model", chunked(json_body(2 * LIMIT))))


@pytest.mark.parametrize("path", ["/raw", "/model"])
def test_body_under_the_limit_passes(path: str) -> None:
    """A body under the limit reaches the route, declared or chunked."""
    assert post(path, json_body(100)).json() == {"chars": 100}
    assert post(path, chunked(json_body(100), chunk_size=16)).json() == {"chars": 100}


def test_body_exactly_at_the_limit_passes() -> None:
    """A body of exactly max_bytes is accepted."""
    body = json_body(LIMIT - len(json_body(0)))
    assert len(body) == LIMIT
    assert post("/raw", body).status_code == 200
    assert post("/raw", chunked(body)).status_code == 200


def test_refusal_carries_the_request_id_from_request_id_middleware() -> None:
    """Behind RequestIdMiddleware, the 413 body and header carry the request's id."""
    app = make_app()
    app.add_middleware(RequestIdMiddleware)  # added last, so outermost

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(
                "/raw",
                content=json_body(2 * LIMIT),
                headers={"content-type": "application/json", "x-request-id": "big-1"},
            )

    problem = assert_body_too_large(asyncio.run(main()))
    assert problem["request_id"] == "big-1"
