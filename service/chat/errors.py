"""Failures shown to the user as one line: problem+json bodies and transport errors."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import httpx

from service.chat.text import one_line


class ChatError(Exception):
    """A failure the user sees as one line (the exception's text), never a traceback."""


class ServiceProblem(ChatError):
    """The service (or a proxy in front of it) answered with an HTTP error."""

    def __init__(self, status: int, line: str, *, code: str | None = None) -> None:
        super().__init__(line)
        self.status = status
        self.code = code


def _reason(status: int, response: httpx.Response) -> str:
    # HTTP/2 has no reason phrase; the standard one is as good.
    if response.reason_phrase:
        return response.reason_phrase
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return one_line(str(value), 200) if isinstance(value, str | int) and value != "" else None


def _validation(body: dict[str, Any]) -> str | None:
    """422 bodies list what was wrong as `errors: [{loc, msg}]`; name the first two."""
    errors = body.get("errors")
    if not isinstance(errors, list):
        return None
    parts = []
    for error in errors[:2]:
        if isinstance(error, dict):
            loc = error.get("loc")
            where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
            parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return one_line("; ".join(parts), 200) if parts else None


def problem_from_response(response: httpx.Response) -> ServiceProblem:
    """One line from an error response: status, title, detail, request id, retry hint.

    graphgate answers with problem+json (RFC 9457). A proxy's own error page (nginx's
    HTML 502, say) is not JSON, so the status line and headers are all there is.
    """
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    title = _field(body, "title") or _reason(status, response)
    parts = [f"{status} {title}"]
    detail = _field(body, "detail") or _validation(body)
    if detail and detail != title:
        parts.append(f": {detail}")
    notes = []
    if not body and status >= 400:
        # nginx's 502 when the service is down, a load balancer's 503, ...
        notes.append("not a graphgate error body: from a proxy in front of it?")
    request_id = _field(body, "request_id") or response.headers.get("x-request-id")
    if request_id:
        notes.append(f"request id {one_line(request_id, 80)}")
    retry_after = response.headers.get("retry-after")
    if retry_after and retry_after.isdigit():
        notes.append(f"retry after {retry_after} s")
    location = response.headers.get("location")
    if 300 <= status < 400 and location:
        # The base URL to pass instead: the target without the API path we asked for.
        base = location.split("/v1/", 1)[0] if "/v1/" in location else location
        notes.append(f"redirects to {one_line(base, 200)}; use that as --url")
    if notes:
        parts.append(f" ({'; '.join(notes)})")
    code = body.get("code")
    return ServiceProblem(status, "".join(parts), code=code if isinstance(code, str) else None)


def _os_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    # "[Errno 111] Connection refused" -> "connection refused"; SSL texts are kept whole.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return one_line(text[:1].lower() + text[1:], 200)


def transport_failure(exc: httpx.HTTPError, url: str) -> ChatError:
    """A request to `url` that got no HTTP answer, or lost it half-way."""
    if isinstance(exc, httpx.ConnectTimeout):
        return ChatError(f"cannot connect to {url}: timed out")
    if isinstance(exc, httpx.ConnectError):
        reason = _os_reason(exc)
        if "certificate" in reason.lower():
            reason += " (for a private CA, set SSL_CERT_FILE to its certificate file)"
        return ChatError(f"cannot connect to {url}: {reason}")
    if isinstance(exc, httpx.ReadTimeout):
        return ChatError(f"no data from {url} for too long (not even a heartbeat); "
                         "gave up waiting")
    if isinstance(exc, httpx.TimeoutException):
        return ChatError(f"request to {url} timed out")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return ChatError(f"connection to {url} was cut: {_os_reason(exc)}")
    return ChatError(f"request to {url} failed: {type(exc).__name__}: {_os_reason(exc)}")
