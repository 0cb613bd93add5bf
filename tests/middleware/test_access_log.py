"""AccessLogMiddleware: one line per request, one per finished stream, nothing buffered.

Lines are read from the real log output (configure_logging on a StringIO), produced by
apps driven through httpx's ASGI transport, direct ASGI calls, or a real uvicorn server.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware.access_log import ACCESS_STATE_KEY, AccessLogMiddleware, access_fields
from service.middleware.request_id import RequestIdMiddleware
from service.observability.logging import configure_logging
from service.security.api_keys import generate_key
from service.security.principal import SCOPE_STATE_KEY, Principal
from service.settings import Settings
from tests.support.ports import free_port

KEY = generate_key()[1]


@pytest.fixture(autouse=True)
def log_output(tmp_path: Path) -> Iterator[io.StringIO]:
    """graphgate's production JSON logging, written to a StringIO; restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    keys = tmp_path / "keys.toml"
    keys.write_text("")
    out = io.StringIO()
    configure_logging(Settings(env="production", auth={"api_keys_file": str(keys)}), stream=out)
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.captureWarnings(False)
    structlog.configure(**saved[2])


def access_lines(out: io.StringIO) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [line for line in parsed if line["event"] in ("access", "stream_finished")]


# --- a small FastAPI app, wrapped as the service wraps its own ---------------------------

app = FastAPI()


@app.get("/items")
async def list_items() -> dict[str, Any]:
    return {"items": []}


@app.get("/items/{item_id}")
async def get_item(item_id: str) -> dict[str, Any]:
    return {"id": item_id}


@app.get("/boom")
async def boom() -> dict[str, Any]:
    raise RuntimeError("the handler failed")


@app.post("/threads/{thread_id}/runs/stream")
async def stream_run(thread_id: str, request: Request) -> StreamingResponse:
    fields = access_fields(request.scope)
    fields.update(thread_id=thread_id, run_id="run-7", graph="demo",
                  body="never logged: not an access field")

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        try:
            for n in range(3):
                yield f"event: token\ndata: {n}\n\n".encode()
                sent += 1
        finally:
            fields.update(stream_outcome="completed", events_sent=sent)

    return StreamingResponse(events(), media_type="text/event-stream")


class FakeAuth:
    """Puts a principal in the scope state, as AuthenticationMiddleware does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[SCOPE_STATE_KEY] = Principal(
                tenant="acme", subject="ci", method="api_key", key_id="k1")
        await self.app(scope, receive, send)


def service_like(inner: ASGIApp, *, clock: Callable[[], float] = time.monotonic) -> ASGIApp:
    """Request id outermost, then the access log, then auth and the app (see app.py)."""
    return RequestIdMiddleware(AccessLogMiddleware(FakeAuth(inner), clock=clock))


def request(method: str, url: str, asgi: ASGIApp | None = None, **kwargs: Any) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi or service_like(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(main())


# --- ordinary requests ------------------------------------------------------------------


def test_one_line_per_request_with_the_canonical_fields(log_output: io.StringIO) -> None:
    response = request("GET", "/items")
    assert response.status_code == 200
    [line] = access_lines(log_output)
    assert line["event"] == "access"
    assert line["level"] == "info"
    assert line["logger"] == "graphgate.access"
    assert (line["method"], line["route"], line["status"]) == ("GET", "/items", 200)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["principal"] == "key:k1"
    assert line["client_ip"] == "127.0.0.1"
    assert "timestamp" in line
    assert "stream_outcome" not in line


def test_route_template_not_raw_path_and_no_query_string(log_output: io.StringIO) -> None:
    response = request("GET", f"/items/item-4711?api_key={KEY}&q=private",
                       headers={"X-API-Key": KEY, "Cookie": "session=s3ss10n"})
    assert response.json() == {"id": "item-4711"}
    [line] = access_lines(log_output)
    assert line["route"] == "/items/{item_id}"
    text = json.dumps(line)  # (the test's own httpx client logs the URL it requested)
    for leaked in ("item-4711", KEY, "api_key", "private", "?", "s3ss10n", "X-API-Key"):
        assert leaked not in text


def test_unmatched_path_is_logged_as_unmatched(log_output: io.StringIO) -> None:
    response = request("GET", "/no/such/thing-12345")
    assert response.status_code == 404
    [line] = access_lines(log_output)
    assert (line["route"], line["status"]) == ("unmatched", 404)
    assert "thing-12345" not in json.dumps(line)


def test_a_handler_exception_is_a_500_line_and_propagates(log_output: io.StringIO) -> None:
    with pytest.raises(RuntimeError, match="the handler failed"):
        request("GET", "/boom")
    [line] = access_lines(log_output)
    assert (line["route"], line["status"], line["error"]) == ("/boom", 500, "RuntimeError")


def test_an_app_raising_before_any_response_is_a_500_line(log_output: io.StringIO) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("no response at all")

    middleware = AccessLogMiddleware(broken)
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    with pytest.raises(ValueError, match="no response at all"):
        asyncio.run(middleware(http_scope("/x"), receive, send))
    assert messages == []
    [line] = access_lines(log_output)
    assert (line["status"], line["route"], line["error"]) == (500, "unmatched", "ValueError")
    assert line["principal"] is None
    assert line["request_id"] is None


def test_refusals_by_inner_middleware_are_logged(log_output: io.StringIO) -> None:
    """A 401 from middleware inside the access log (no route ran, no principal)."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"title": "Unauthorized"}, status_code=401)
        await response(scope, receive, send)

    response = request("GET", "/items", asgi=RequestIdMiddleware(AccessLogMiddleware(refuse)))
    assert response.status_code == 401
    [line] = access_lines(log_output)
    assert (line["status"], line["route"], line["principal"]) == (401, "unmatched", None)
    assert line["request_id"] == response.headers["x-request-id"]


def test_duration_comes_from_the_clock(log_output: io.StringIO) -> None:
    ticks = iter([100.0, 100.25])
    request("GET", "/items", asgi=service_like(app, clock=lambda: next(ticks)))
    [line] = access_lines(log_output)
    assert line["duration_ms"] == 250.0


def test_routes_under_a_mount_keep_their_prefix(log_output: io.StringIO) -> None:
    async def thing(request: Any) -> JSONResponse:
        return JSONResponse({})

    mounted = Starlette(routes=[Mount("/api", routes=[Route("/things/{thing_id}", thing)])])
    assert request("GET", "/api/things/t-99", asgi=AccessLogMiddleware(mounted)).is_success
    [line] = access_lines(log_output)
    assert line["route"] == "/api/things/{thing_id}"


def test_a_405_names_the_route(log_output: io.StringIO) -> None:
    assert request("DELETE", "/items/x").status_code == 405
    [line] = access_lines(log_output)
    assert (line["route"], line["status"]) == ("/items/{item_id}", 405)


# --- streams ----------------------------------------------------------------------------


def test_a_stream_gets_one_stream_finished_line_with_route_fields(
    log_output: io.StringIO,
) -> None:
    response = request("POST", "/threads/th-1/runs/stream")
    assert response.text.count("event: token") == 3
    [line] = access_lines(log_output)
    assert line["event"] == "stream_finished"
    assert line["route"] == "/threads/{thread_id}/runs/stream"
    assert line["status"] == 200
    assert line["thread_id"] == "th-1"
    assert line["run_id"] == "run-7"
    assert line["graph"] == "demo"
    assert line["stream_outcome"] == "completed"
    assert line["events_sent"] == 3
    assert line["principal"] == "key:k1"
    assert "body" not in line
    assert "never logged" not in log_output.getvalue()


def http_scope(path: str) -> Scope:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [], "client": ("10.0.0.9", 5000), "server": ("test", 80)}


def sse_start() -> Message:
    return {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]}


def test_chunks_pass_through_before_the_producer_finishes(log_output: io.StringIO) -> None:
    """The app only sends its last chunk after the first one reached the server."""
    first_delivered = anyio.Event()

    async def producer(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await first_delivered.wait()  # a buffering middleware would hang here
        scope["state"][ACCESS_STATE_KEY] = {"events_sent": 2}
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    seen: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            seen.append(message["body"])
            if message["body"] == b"data: 1\n\n":
                assert access_lines(log_output) == []  # no line while streaming
                first_delivered.set()

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def main() -> None:
        with anyio.fail_after(5):
            await AccessLogMiddleware(producer)(http_scope("/s"), receive, send)

    asyncio.run(main())
    assert seen == [b"data: 1\n\n", b"data: 2\n\n", b""]
    [line] = access_lines(log_output)
    assert line["event"] == "stream_finished"
    assert (line["stream_outcome"], line["events_sent"]) == ("completed", 2)
    assert line["client_ip"] == "10.0.0.9"


def test_a_client_disconnect_without_a_recorded_outcome(log_output: io.StringIO) -> None:
    """A stream that ends because the client left (no final chunk) says so."""

    async def streamer(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    inbox = [{"type": "http.request", "body": b"", "more_body": False},
             {"type": "http.disconnect"}]

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        pass

    asyncio.run(AccessLogMiddleware(streamer)(http_scope("/s"), receive, send))
    [line] = access_lines(log_output)
    assert (line["event"], line["stream_outcome"]) == ("stream_finished", "client_disconnected")


def test_a_stream_that_raises_midway(log_output: io.StringIO) -> None:
    async def streamer(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        raise OSError("graph crashed")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    with pytest.raises(OSError, match="graph crashed"):
        asyncio.run(AccessLogMiddleware(streamer)(http_scope("/s"), receive, send))
    [line] = access_lines(log_output)
    assert (line["status"], line["stream_outcome"], line["error"]) == (200, "error", "OSError")


def test_a_stream_cancelled_by_the_server(log_output: io.StringIO) -> None:
    """Shutdown cancels the request task: the line is still written, as cancelled."""

    async def streamer(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await anyio.sleep_forever()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def main() -> None:
        with anyio.move_on_after(0.05):
            await AccessLogMiddleware(streamer)(http_scope("/s"), receive, send)

    asyncio.run(main())
    [line] = access_lines(log_output)
    assert (line["stream_outcome"], line["error"]) == ("cancelled", "CancelledError")


def test_non_http_scopes_pass_through_without_a_line(log_output: io.StringIO) -> None:
    called: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    asyncio.run(AccessLogMiddleware(lifespan_app)({"type": "lifespan"}, receive, send))
    assert called == ["lifespan"]
    assert access_lines(log_output) == []


def test_a_real_server_streams_unbuffered_and_logs_once(log_output: io.StringIO) -> None:
    """Through uvicorn: the first event arrives while the producer is still waiting."""
    release = threading.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"event: token\ndata: 1\n\n"
        await anyio.to_thread.run_sync(release.wait)
        yield b"event: done\ndata: {}\n\n"

    async def slow_stream(request: Any) -> StreamingResponse:
        access_fields(request.scope).update(stream_outcome="completed", events_sent=2)
        return StreamingResponse(events(), media_type="text/event-stream")

    server_app = service_like(Starlette(routes=[Route("/stream", slow_stream)]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(server_app, host="127.0.0.1", port=port,
                                           log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        with httpx.stream("GET", f"http://127.0.0.1:{port}/stream?token={KEY}",
                          timeout=10) as response:
            chunks = response.iter_bytes()
            assert next(chunks).startswith(b"event: token")
            assert access_lines(log_output) == []  # the stream is still open
            release.set()
            rest = b"".join(chunks)
        assert b"event: done" in rest
        deadline = time.monotonic() + 5
        while not access_lines(log_output) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        release.set()
        server.should_exit = True
        thread.join(15)
    [line] = access_lines(log_output)
    assert line["event"] == "stream_finished"
    assert (line["route"], line["status"], line["events_sent"]) == ("/stream", 200, 2)
    assert line["principal"] == "key:k1"
    assert KEY not in log_output.getvalue()
