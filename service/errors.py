"""One error shape for every 4xx/5xx: RFC 9457 problem+json plus `code` and `request_id`.

Handlers here never put exception text in a response: clients get a fixed title and
detail per error code; the exception itself goes to the server log.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from service.observability.tracing import current_trace_ids

PROBLEM_TYPE = "application/problem+json"
# What every API response carries (SecurityHeadersMiddleware adds them; error responses
# carry them themselves, since a 500 is rendered outside that middleware).
HARDENING_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
log = structlog.get_logger("graphgate.errors")


class ServiceError(Exception):
    """An error with a fixed, client-safe description."""

    status = 500
    code = "internal_error"
    title = "Internal server error"
    detail: str | None = None
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self, detail: str | None = None, *, headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        if detail is not None:
            self.detail = detail
        self.response_headers = {**type(self).headers, **(headers or {})}
        self.extra = extra


class ThreadNotFound(ServiceError):
    status, code, title = 404, "thread_not_found", "Thread not found"


class ThreadBusyError(ServiceError):
    status, code, title = 409, "thread_busy", "Thread busy"
    detail = "Another run is in progress on this thread; retry when it has finished."
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "1"}


class UnknownGraphError(ServiceError):
    status, code, title = 422, "unknown_graph", "Unknown graph"


class InvalidRequest(ServiceError):
    status, code, title = 422, "invalid_request", "Invalid request"


class InsufficientScope(ServiceError):
    status, code, title = 403, "insufficient_scope", "Forbidden"

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"These credentials lack the {scope!r} scope.",
            headers={"WWW-Authenticate": f'Bearer realm="graphgate", '
                     f'error="insufficient_scope", scope="{scope}"'},
            required_scope=scope,
        )


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Too many requests"
    detail = ("The rate limit for these credentials was reached; retry after the number of "
              "seconds in Retry-After.")


class ServiceUnavailable(ServiceError):
    status, code, title = 503, "unavailable", "Service unavailable"
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "5"}


class StorageUnavailableError(ServiceUnavailable):
    code, title = "storage_unavailable", "Storage unavailable"
    detail = "The conversation store is unavailable; try again."


class BodyTooLarge(HTTPException):
    """Raised from inside a body read. An HTTPException because FastAPI re-raises those
    from there (anything else becomes a generic 400); it has its own handler below."""

    code, title = "body_too_large", "Request body too large"

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def request_id_of(request: Request) -> str:
    rid = request.scope.get("state", {}).get("request_id")
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def problem(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    rid = request_id_of(request)
    body: dict[str, Any] = {
        "type": f"urn:graphgate:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
        "request_id": rid,
    }
    if detail:
        body["detail"] = detail
    trace = current_trace_ids()
    if trace is not None:
        body["trace_id"] = trace[0]  # to find the request's trace from a bug report
    body.update(extra)
    # The hardening headers again: a 500 is rendered outside the middleware that adds them.
    all_headers = {"x-request-id": rid, **HARDENING_HEADERS, **(headers or {})}
    return JSONResponse(body, status_code=status, headers=all_headers, media_type=PROBLEM_TYPE)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return problem(request, exc.status, exc.code, exc.title, exc.detail, exc.response_headers,
                   **exc.extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    code = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
    # Starlette's own details ("Not Found", "Method Not Allowed") are fixed strings;
    # anything else is replaced, in case a library put exception text there.
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    if status >= 500:
        detail = None
    return problem(request, status, code, phrase, detail, exc.headers)


async def _body_too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    return problem(request, 413, exc.code, exc.title, str(exc.detail))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    malformed = False
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            malformed = True
        # `loc` and `msg` only: pydantic's `input`/`ctx` echo the client's data back.
        errors.append({"loc": [str(p) for p in error.get("loc", ())], "msg": error.get("msg")})
    if malformed:
        return problem(request, 400, "malformed_json", "Malformed JSON body",
                       "The request body is not valid JSON.")
    return problem(request, 422, "invalid_request", "Invalid request",
                   "The request does not match the expected schema.", errors=errors)


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled_exception", request_id=request_id_of(request),
              exc_type=type(exc).__name__, exc_info=exc)
    return problem(request, 500, "internal_error", "Internal server error",
                   "An unexpected error occurred; quote the request id when reporting it.")


def install_error_handlers(
    app: FastAPI, storage_errors: tuple[type[Exception], ...] = (),
    on_storage_error: Callable[[], None] | None = None,
) -> None:
    """Map every error to the one problem shape; `storage_errors` become 503s (each one
    reported to `on_storage_error`, e.g. a counter)."""

    async def storage_unavailable(request: Request, exc: Exception) -> Response:
        # The driver's message names hosts and SQL; the log has it, the client the code.
        log.warning("storage_unavailable", exc_type=type(exc).__name__)
        if on_storage_error is not None:
            on_storage_error()
        return await _service_error(request, StorageUnavailableError())

    app.add_exception_handler(ServiceError, _service_error)
    for exc_type in storage_errors:
        app.add_exception_handler(exc_type, storage_unavailable)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Registered for Exception, Starlette runs this inside its outermost
    # ServerErrorMiddleware, which re-raises afterwards so the server logs it too.
    app.add_exception_handler(Exception, _unhandled)
