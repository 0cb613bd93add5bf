"""One canonical log line per request, and one per finished event stream.

`AccessLogMiddleware` passes every ASGI message through untouched and unbuffered, and
notes the status, whether the response is an event stream, and when its last body
message went out. When the app returns (or raises) it writes exactly one line:

* `access` for ordinary responses, `stream_finished` for `text/event-stream` ones;
* method, route template (`/v1/threads/{thread_id}`, never the raw path, and never the
  query string, where a client may have put a key), status, duration_ms, request_id,
  principal (`Principal.identity`: key id or method/tenant/subject, never a secret),
  client_ip;
* what the route recorded in `scope["state"]["access"]` (see `access_fields`): thread
  id, run id, graph, stream outcome, events sent.

Headers and bodies are never logged. An app that raises before responding is logged as
status 500 and the exception propagates unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware.response_hooks import on_response_end, on_response_start
from service.security.principal import SCOPE_STATE_KEY, Principal

ACCESS_STATE_KEY = "access"
# What routes may record for the line (anything else in the dict is ignored, so a route
# cannot put a body or a header in the log by accident).
ACCESS_FIELDS = ("thread_id", "run_id", "graph", "stream_outcome", "events_sent")
UNMATCHED = "unmatched"


def access_fields(scope: Scope) -> dict[str, Any]:
    """The dict a route fills for its access line (created on first use).

    From a FastAPI route: `access_fields(request.scope).update(thread_id=..., run_id=...)`.
    It is read when the response is over, so values set while streaming, or in the
    stream's clean-up, are included.
    """
    state = scope.setdefault("state", {})
    fields = state.get(ACCESS_STATE_KEY)
    if isinstance(fields, dict):
        return fields
    fresh: dict[str, Any] = {}
    state[ACCESS_STATE_KEY] = fresh
    return fresh


class AccessLogMiddleware:
    def __init__(
        self, app: ASGIApp, *, logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        route_of: Callable[[Scope], str] | None = None,
    ) -> None:
        self.app = app
        self.log = logger if logger is not None else structlog.get_logger("graphgate.access")
        self.clock = clock
        # The app passes the same resolver the metrics use, so a request refused before
        # routing (401, 413, 429) is logged under the route template it was counted as.
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        # Held by reference: inner middleware and routes write into this same dict
        # (request id, principal, access fields) even if they copy the scope.
        state: dict[str, Any] = scope.setdefault("state", {})
        root_path: str = scope.get("root_path", "")
        status: int | None = None
        event_stream = False
        ended: float | None = None

        def note_start(message: Message) -> None:
            nonlocal status, event_stream
            status = int(message["status"])
            event_stream = _is_event_stream(message.get("headers", ()))

        def note_end() -> None:
            nonlocal ended
            ended = self.clock()

        send = on_response_end(scope, on_response_start(scope, send, note_start), note_end)
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finished = self.clock() if ended is None else ended
            fields: dict[str, Any] = {
                "method": scope.get("method"),
                "route": (self.route_of(scope) if self.route_of is not None
                          else _route_template(scope, root_path)),
                # The server answers 500 to an app that raised before responding.
                "status": 500 if status is None else status,
                "duration_ms": round((finished - started) * 1000, 2),
                "request_id": state.get("request_id"),
                "principal": _identity(state.get(SCOPE_STATE_KEY)),
                "client_ip": _client_ip(scope),
            }
            recorded = state.get(ACCESS_STATE_KEY)
            if isinstance(recorded, Mapping):
                fields.update((k, recorded[k]) for k in ACCESS_FIELDS if k in recorded)
            if error is not None:
                fields["error"] = type(error).__name__
            if event_stream:
                fields.setdefault("stream_outcome", _stream_outcome(error, ended is not None))
            self.log.info("stream_finished" if event_stream else "access", **fields)


def _is_event_stream(headers: Any) -> bool:
    for name, value in headers:
        if bytes(name).lower() == b"content-type":
            return bytes(value).lower().lstrip().startswith(b"text/event-stream")
    return False


def _route_template(scope: Scope, root_path: str) -> str:
    """The path template of the route that handled the request, or "unmatched".

    Starlette's router puts the matched route in `scope["route"]`. Under a Mount the
    inner route's path is relative to it; the mount's prefix is what routing added to
    `root_path`.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    final_root: str = scope.get("root_path", "")
    if not hasattr(route, "routes") and final_root.startswith(root_path):
        # A route inside a Mount (a Mount itself already is the full prefix).
        path = final_root[len(root_path):] + path
    return path or "/"


def _identity(principal: Any) -> str | None:
    return principal.identity if isinstance(principal, Principal) else None


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    if client:
        return str(client[0])
    return None


def _stream_outcome(error: BaseException | None, completed: bool) -> str:
    """The outcome when the route recorded none (names as in stream_metrics)."""
    if isinstance(error, asyncio.CancelledError | anyio.get_cancelled_exc_class()):
        return "cancelled"
    if error is not None:
        return "error"
    # Without its final chunk a stream ended because the client left or stopped reading.
    return "completed" if completed else "client_disconnected"
