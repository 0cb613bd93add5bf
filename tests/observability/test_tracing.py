"""Tracing: server spans named by route, one span per graph run, nothing secret in a span.

The HTTP tests serve an instrumented `create_app` with real uvicorn and collect spans in
memory (SimpleSpanProcessor: a span is exported the moment it ends).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from service import __version__
from service.app import create_app
from service.observability import tracing
from service.observability.tracing import (
    FASTAPI_TELEMETRY_OFF,
    RUN_ERROR_CODE,
    RUN_OUTCOME,
    RedactingSpanExporter,
    add_trace_ids,
    build_tracer_provider,
    current_trace_ids,
    instrument_app,
    otlp_traces_endpoint,
    redact_span,
    run_span,
    set_run_outcome,
    setup_tracing,
    tracing_enabled,
)
from service.settings.security import TelemetrySettings
from tests.conftest import make_settings
from tests.support.ports import free_port
from tests.support.sse import events

API_KEY = "ggk_0123456789abcdef_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0_1a2b3c4d"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"
QUERY = f"?api_key={API_KEY}&token={JWT}"
SECRETS = (API_KEY, JWT, "c2VjcmV0c2VjcmV0", "c2lnbmF0dXJlLXNlY3JldA")


@pytest.fixture
def memory() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(memory: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider
    provider.shutdown()


@pytest.fixture
def serve_app() -> Iterator[Callable[[FastAPI], str]]:
    """Serve an app with real uvicorn in a thread (as ThreadServer does); returns its URL.

    Afterwards the server stops and the app is uninstrumented (the instrumentation also
    patches starlette's BackgroundTask class-wide; this undoes it).
    """
    started: list[tuple[uvicorn.Server, threading.Thread, FastAPI]] = []

    def _serve(app: FastAPI) -> str:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                log_config=None, timeout_graceful_shutdown=3,
                                proxy_headers=False, server_header=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread, app))
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "server failed to start"
            assert time.monotonic() < deadline, "server did not start within 30 s"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield _serve
    for server, thread, app in started:
        server.should_exit = True
        thread.join(15)
        if getattr(app, "_is_instrumented_by_opentelemetry", False):
            FastAPIInstrumentor.uninstrument_app(app)


def traced_app(tmp_path: Path, provider: TracerProvider, **overrides: Any) -> FastAPI:
    """The app as create_app builds it with tracing on (instrumented, runs traced)."""
    return create_app(make_settings(f"sqlite:///{tmp_path}/graphgate.sqlite", **overrides),
                      tracer_provider=provider)


def wait_for(memory: InMemorySpanExporter, predicate: Callable[[ReadableSpan], bool],
             count: int = 1) -> list[ReadableSpan]:
    """The finished spans matching, once there are `count` (a server span ends only after
    the last byte of its response has been sent, so just after the client saw it)."""
    deadline = time.monotonic() + 10
    while True:
        found = [s for s in memory.get_finished_spans() if predicate(s)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def named(name: str) -> Callable[[ReadableSpan], bool]:
    return lambda span: span.name == name


def everything_in(span: ReadableSpan) -> str:
    """Every string a span would export: name, attributes, events, status, resource."""
    parts = [span.name, repr(dict(span.attributes or {})), repr(span.status.description),
             repr(dict(span.resource.attributes))]
    for event in span.events:
        parts += [event.name, repr(dict(event.attributes or {}))]
    return "\n".join(parts)


# --- a streamed run over HTTP ----------------------------------------------------------


def test_streamed_run_span_tree(
    tmp_path: Path, provider: TracerProvider, memory: InMemorySpanExporter,
    serve_app: Callable[[FastAPI], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One SERVER span named by route, the graph run as its child, and no span per chunk."""
    url = serve_app(traced_app(tmp_path, provider, demo={"token_delay_ms": 0,
                                                          "reply_tokens": 40}))
    with httpx.stream("POST", url + "/v1/chat/stream" + QUERY, timeout=30,
                      json={"message": "hello", "thread_id": "trace-1"}) as response:
        assert response.status_code == 200
        frames = events(response)
    assert len([f for f in frames if f.event == "messages"]) >= 40
    run_id = frames[0].data["run_id"]

    [server] = wait_for(memory, named("POST /v1/chat/stream"))
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/chat/stream"
    assert server.attributes["http.status_code"] == 200
    [run] = wait_for(memory, named("graph.run demo"))
    assert run.kind is SpanKind.INTERNAL
    assert run.parent is not None and server.context is not None and run.context is not None
    assert run.parent.span_id == server.context.span_id
    assert run.context.trace_id == server.context.trace_id
    assert dict(run.attributes or {}) == {
        "graphgate.graph": "demo", "graphgate.thread_id": "trace-1",
        "graphgate.run_id": run_id, RUN_OUTCOME: "success",
    }
    assert run.status.status_code is StatusCode.UNSET
    # 40+ SSE frames, yet the whole trace is these two spans: no `http send` per chunk.
    in_trace = [s for s in memory.get_finished_spans()
                if s.context is not None and s.context.trace_id == server.context.trace_id]
    assert sorted(s.name for s in in_trace) == ["POST /v1/chat/stream", "graph.run demo"]
    assert not [s for s in memory.get_finished_spans() if "send" in s.name
                or "receive" in s.name]


def test_thread_routes_are_named_by_template_and_queries_never_recorded(
    tmp_path: Path, provider: TracerProvider, memory: InMemorySpanExporter,
    serve_app: Callable[[FastAPI], str],
) -> None:
    url = serve_app(traced_app(tmp_path, provider))
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/chat" + QUERY,
                           json={"message": "hi", "thread_id": "t-42"}).status_code == 200
        assert client.get("/v1/threads/t-42/state" + QUERY).status_code == 200
        assert client.get("/v1/threads/t-42/history" + QUERY + "&limit=5").status_code == 200
        assert client.get("/v1/threads" + QUERY).status_code == 200
        assert client.get("/v1/nowhere/secret-path" + QUERY).status_code == 404

    expected = ["POST /v1/chat", "GET /v1/threads/{thread_id}/state",
                "GET /v1/threads/{thread_id}/history", "GET /v1/threads", "GET"]
    spans = wait_for(memory, lambda s: s.kind is SpanKind.SERVER, count=len(expected))
    spans.sort(key=lambda s: s.start_time or 0)
    assert [s.name for s in spans] == expected  # a 404 is named by its method alone
    state = spans[1]
    assert state.attributes is not None
    assert state.attributes["http.route"] == "/v1/threads/{thread_id}/state"
    assert state.attributes["http.target"] == "/v1/threads/t-42/state"
    assert str(state.attributes["http.url"]).endswith("/v1/threads/t-42/state?REDACTED")
    for span in memory.get_finished_spans():
        text = everything_in(span)
        for secret in (*SECRETS, "api_key", "token="):
            assert secret not in text, (span.name, secret)


SEMCONV_SCRIPT = """
import anyio, httpx
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from service.observability.tracing import instrument_app

memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
app = FastAPI()

@app.get("/t/{x}")
async def t(x: str) -> dict[str, str]:
    return {}

instrument_app(app, provider)

async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
        await client.get("/t/1?token=SECRET1&api_key=SECRET2", headers={"x-api-key": "SECRET3"})

anyio.run(main)
[span] = memory.get_finished_spans()
print(repr(dict(span.attributes)))
"""


@pytest.mark.parametrize("mode", ["", "http", "http/dup"])
def test_queries_are_redacted_under_every_semantic_convention(mode: str) -> None:
    """OTEL_SEMCONV_STABILITY_OPT_IN picks http.url, url.query or both (once per process)."""
    env = {**os.environ, "OTEL_SEMCONV_STABILITY_OPT_IN": mode,
           "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*"}
    done = subprocess.run([sys.executable, "-c", SEMCONV_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    attributes = done.stdout
    assert "SECRET" not in attributes
    assert "'http.route': '/t/{x}'" in attributes
    if mode in ("", "http/dup"):
        assert "'http.url': 'http://h/t/1?REDACTED'" in attributes
    if mode in ("http", "http/dup"):
        assert "'url.query': 'REDACTED'" in attributes


def test_probes_and_metrics_are_not_traced(
    tmp_path: Path, provider: TracerProvider, memory: InMemorySpanExporter,
    serve_app: Callable[[FastAPI], str],
) -> None:
    url = serve_app(traced_app(tmp_path, provider))
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        client.get("/metrics")
        # Anchored: a thread that happens to be called "healthz" is traced.
        client.get("/v1/threads/healthz/state")
    wait_for(memory, lambda s: s.kind is SpanKind.SERVER)
    time.sleep(0.2)  # any span of the untraced requests would have ended by now
    assert [s.name for s in memory.get_finished_spans()] == [
        "GET /v1/threads/{thread_id}/state"]


def test_headers_are_never_captured_even_when_the_environment_asks(
    tmp_path: Path, provider: TracerProvider, memory: InMemorySpanExporter,
    serve_app: Callable[[FastAPI], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "nothing")
    url = serve_app(traced_app(tmp_path, provider))
    headers = {"Authorization": f"Bearer {JWT}", "X-API-Key": API_KEY, "Cookie": "s=cookie1"}
    # Credentials while auth is off are refused (401); the span is what matters here.
    assert httpx.get(url + "/v1/threads", headers=headers, timeout=30).status_code == 401
    [span] = wait_for(memory, named("GET /v1/threads"))
    assert not [k for k in span.attributes or {} if ".header." in k]
    text = everything_in(span)
    for secret in (*SECRETS, "cookie1"):
        assert secret not in text


def test_the_header_test_sees_what_it_guards_against(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the same variables on a default instrumentation do capture credentials."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, str]:
        return {}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    try:
        async def call() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await client.get("/x" + QUERY, headers={"X-API-Key": API_KEY})

        anyio.run(call)
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    [span] = [s for s in memory.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert API_KEY in everything_in(span)  # both in http.url and in the captured header


def test_fastapi_native_telemetry_is_off_with_our_config(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    """FastAPI's own telemetry records the raw query: create_app must pass the off switch."""

    def request(config: TelemetryConfig) -> None:
        app = FastAPI(telemetry=config)

        @app.get("/t/{x}")
        async def t(x: str) -> dict[str, str]:
            return {}

        async def call() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await client.get("/t/1" + QUERY)

        anyio.run(call)

    request({"tracer_provider": provider})  # the control: on by default once it has one
    assert any(JWT in everything_in(s) for s in memory.get_finished_spans())
    memory.clear()
    request({**FASTAPI_TELEMETRY_OFF, "tracer_provider": provider})
    assert memory.get_finished_spans() == ()


def test_exception_text_is_recorded_by_the_instrumentation_and_never_exported(
    tmp_path: Path, serve_app: Callable[[FastAPI], str],
) -> None:
    """The whole pipeline of build_tracer_provider: batched, redacted, then exported."""
    memory = InMemorySpanExporter()
    settings = TelemetrySettings(otlp_endpoint="http://127.0.0.1:9/v1/traces")
    app = create_app(make_settings(f"sqlite:///{tmp_path}/graphgate.sqlite"))

    @app.get("/boom/{item}")
    async def boom(item: str) -> None:
        raise RuntimeError(f"db password=hunter2 for {item}")

    provider = build_tracer_provider(settings, {}, exporter=memory)
    assert provider is not None
    raw = InMemorySpanExporter()  # the same spans, unredacted: the control
    provider.add_span_processor(SimpleSpanProcessor(raw))
    try:
        instrument_app(app, provider)
        url = serve_app(app)
        response = httpx.get(url + "/boom/x" + QUERY, timeout=30)
        assert response.status_code == 500
        deadline = time.monotonic() + 10
        while not memory.get_finished_spans() and time.monotonic() < deadline:
            provider.force_flush()
            time.sleep(0.05)
        [span] = memory.get_finished_spans()
    finally:
        provider.shutdown()
    [unredacted] = raw.get_finished_spans()
    assert "hunter2" in everything_in(unredacted)  # what the instrumentation recorded
    assert span.name == "GET /boom/{item}"
    assert span.status.status_code is StatusCode.ERROR
    # The instrumentation sets `RuntimeError: <message>`, then the 500 overwrites it.
    assert span.status.description in (None, "RuntimeError")
    exceptions = [dict(e.attributes or {}) for e in span.events if e.name == "exception"]
    assert exceptions  # recorded by the instrumentation, now without message or traceback
    assert all(e.keys() <= {"exception.type", "exception.escaped"} for e in exceptions)
    assert all(e["exception.type"] == "RuntimeError" for e in exceptions)
    text = everything_in(span)
    for secret in (*SECRETS, "hunter2", "password"):
        assert secret not in text
    assert span.resource.attributes["service.name"] == "graphgate"


def test_redact_span_strips_what_the_instrumentation_records(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER, attributes={
        "http.url": f"http://h/x{QUERY}", "url.full": f"http://h/x{QUERY}",
        "http.target": f"/x{QUERY}", "url.query": QUERY[1:], "url.path": "/x",
        "http.request.header.x_api_key": (API_KEY,),
    }) as span:
        span.record_exception(ValueError(f"token {JWT}"))
        span.add_event("note", {"exception.message": JWT, "http.url": f"/y{QUERY}"})
        span.set_status(StatusCode.ERROR, f"ValueError: token {JWT}")
    [raw] = memory.get_finished_spans()
    assert JWT in everything_in(raw)
    clean = redact_span(raw)
    assert dict(clean.attributes or {}) == {
        "http.url": "http://h/x?REDACTED", "url.full": "http://h/x?REDACTED",
        "http.target": "/x?REDACTED", "url.query": "REDACTED", "url.path": "/x"}
    assert dict(clean.events[0].attributes or {}) == {
        "exception.type": "ValueError", "exception.escaped": "False"}
    assert dict(clean.events[1].attributes or {}) == {"http.url": "/y?REDACTED"}
    assert clean.status.description == "ValueError"
    assert clean.context == raw.context and clean.parent == raw.parent
    assert (clean.start_time, clean.end_time) == (raw.start_time, raw.end_time)
    for secret in SECRETS:
        assert secret not in everything_in(clean)


def test_redact_span_returns_clean_spans_unchanged(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    with provider.get_tracer("test").start_as_current_span(
            "GET /x", attributes={"http.url": "http://h/x", "http.route": "/x"}):
        pass
    [raw] = memory.get_finished_spans()
    assert redact_span(raw) is raw


def test_redacting_exporter_forwards_to_its_inner_exporter() -> None:
    inner = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(inner)))
    with provider.get_tracer("test").start_as_current_span(
            "s", attributes={"url.query": "token=abc"}):
        pass
    [span] = inner.get_finished_spans()
    assert span.attributes == {"url.query": "REDACTED"}
    assert provider.force_flush()
    provider.shutdown()


# --- graph-run spans ---------------------------------------------------------------------


def test_run_span_is_a_child_of_the_current_span(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    tracer = provider.get_tracer("test")

    async def request() -> None:
        with (tracer.start_as_current_span("POST /v1/chat/stream", kind=SpanKind.SERVER),
              run_span(provider, graph="demo", thread_id="t1", run_id="r1") as span):
            assert span is not None
            # A task started inside the run (the graph's) sees the run span.
            seen: list[tuple[str, str] | None] = []

            async def node() -> None:
                seen.append(current_trace_ids())

            async with anyio.create_task_group() as tg:
                tg.start_soon(node)
            await asyncio.ensure_future(node())
            ctx = span.get_span_context()
            assert seen == [(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")] * 2
            set_run_outcome(span, "success")

    anyio.run(request)
    run, server = memory.get_finished_spans()
    assert run.name == "graph.run demo" and run.kind is SpanKind.INTERNAL
    assert run.parent is not None and server.context is not None
    assert run.parent.span_id == server.context.span_id
    assert dict(run.attributes or {}) == {"graphgate.graph": "demo", "graphgate.thread_id": "t1",
                                          "graphgate.run_id": "r1", RUN_OUTCOME: "success"}
    assert run.status.status_code is StatusCode.UNSET


def test_run_outcomes_set_error_status_without_messages(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    with run_span(provider, graph="g", thread_id="t", run_id="r") as span:
        set_run_outcome(span, "error", error_code="graph_error",
                        exc=ValueError("password=hunter2"))
    with run_span(provider, graph="g", thread_id="t", run_id="r") as span:
        set_run_outcome(span, "timeout", error_code="run_timeout")
    failed, timed_out = memory.get_finished_spans()
    assert failed.attributes is not None and timed_out.attributes is not None
    assert failed.attributes[RUN_OUTCOME] == "error"
    assert failed.attributes[RUN_ERROR_CODE] == "graph_error"
    assert failed.attributes["error.type"] == "ValueError"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "graph_error"
    assert [dict(e.attributes or {}) for e in failed.events] == [
        {"exception.type": "ValueError"}]
    assert "hunter2" not in everything_in(failed)
    assert timed_out.attributes[RUN_OUTCOME] == "timeout"
    assert timed_out.attributes["error.type"] == "run_timeout"
    assert timed_out.status.description == "run_timeout"


def test_run_span_records_escaping_exceptions_by_type_only(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    class LeakyError(Exception):
        pass

    with pytest.raises(LeakyError), run_span(provider, graph="g", thread_id="t", run_id="r"):
        raise LeakyError("dsn=postgres://u:hunter2@db")
    [span] = memory.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes[RUN_OUTCOME] == "error"
    assert str(span.attributes["error.type"]).endswith("LeakyError")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "LeakyError"
    assert "hunter2" not in everything_in(span)
    assert current_trace_ids() is None  # the context was restored


def test_a_cancelled_run_is_not_an_error(
    provider: TracerProvider, memory: InMemorySpanExporter,
) -> None:
    async def main() -> None:
        with anyio.move_on_after(0.01):
            with run_span(provider, graph="g", thread_id="t", run_id="r"):
                await anyio.sleep(5)

    anyio.run(main)
    [span] = memory.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes[RUN_OUTCOME] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET


def test_without_a_provider_run_span_costs_nothing() -> None:
    first = run_span(None, graph="g", thread_id="t", run_id="r")
    assert first is run_span(None, graph="h", thread_id="u", run_id="s")  # one shared object
    with first as span:
        assert span is None
        set_run_outcome(span, "success")
        assert current_trace_ids() is None
    started = time.perf_counter()
    for _ in range(10_000):
        with run_span(None, graph="g", thread_id="t", run_id="r") as span:
            set_run_outcome(span, "success")
        current_trace_ids()
    assert time.perf_counter() - started < 0.5  # ~microseconds each; generous for CI


# --- log correlation ---------------------------------------------------------------------


def test_add_trace_ids_inside_and_outside_spans(provider: TracerProvider) -> None:
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with provider.get_tracer("test").start_as_current_span("s") as span:
        ctx = span.get_span_context()
        event = add_trace_ids(None, "info", {"event": "x"})
    assert event == {"event": "x", "trace_id": f"{ctx.trace_id:032x}",
                     "span_id": f"{ctx.span_id:016x}"}
    assert len(event["trace_id"]) == 32 and len(event["span_id"]) == 16
    assert add_trace_ids(None, "info", {"event": "y"}) == {"event": "y"}


def test_no_trace_ids_for_spans_not_sampled() -> None:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)),
                              shutdown_on_exit=False)
    with provider.get_tracer("test").start_as_current_span("s"):
        assert current_trace_ids() is None
        assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


# --- configuration -------------------------------------------------------------------------


def test_off_by_default(tmp_path: Path) -> None:
    settings = TelemetrySettings()
    assert not tracing_enabled(settings, {})
    assert build_tracer_provider(settings, {}) is None
    app = create_app(make_settings(f"sqlite:///{tmp_path}/graphgate.sqlite"))
    assert setup_tracing(app, settings, {}) is None
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert app.build_middleware_stack.__func__ is FastAPI.build_middleware_stack  # type: ignore[attr-defined]


@pytest.mark.parametrize(("configured", "environ", "expected"), [
    (None, {}, None),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom"},
     "http://t:4318/custom"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"},
     "http://t:4318/v1/traces"),
    ("http://s:4318/v1/traces", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/x"},
     "http://s:4318/v1/traces"),
])
def test_endpoint_resolution(configured: str | None, environ: dict[str, str],
                             expected: str | None) -> None:
    settings = TelemetrySettings(otlp_endpoint=configured)
    assert otlp_traces_endpoint(settings, environ) == expected
    assert tracing_enabled(settings, environ) is (expected is not None)
    disabled = {**environ, "OTEL_SDK_DISABLED": "true"}
    assert not tracing_enabled(settings, disabled)
    assert build_tracer_provider(settings, disabled) is None


def exporter_of(provider: TracerProvider) -> tuple[BatchSpanProcessor, OTLPSpanExporter]:
    [processor] = provider._active_span_processor._span_processors
    assert isinstance(processor, BatchSpanProcessor)
    wrapper = processor.span_exporter
    assert isinstance(wrapper, RedactingSpanExporter)
    assert isinstance(wrapper.inner, OTLPSpanExporter)
    return processor, wrapper.inner


def test_configured_endpoint_builds_a_batched_redacting_otlp_exporter() -> None:
    settings = TelemetrySettings(
        otlp_endpoint="http://collector.internal:4318/v1/traces", service_name="gg-eu",
        resource_attributes={"deployment.environment": "staging"}, sample_ratio=0.25)
    provider = build_tracer_provider(settings, {})
    assert provider is not None
    try:
        _, otlp = exporter_of(provider)
        assert otlp._endpoint == "http://collector.internal:4318/v1/traces"
        resource = dict(provider.resource.attributes)
        assert resource["service.name"] == "gg-eu"
        assert resource["service.version"] == __version__
        assert resource["deployment.environment"] == "staging"
        sampler = provider.sampler
        assert isinstance(sampler, ParentBased)
        assert "TraceIdRatioBased{0.25}" in sampler.get_description()  # type: ignore[no-untyped-call]
    finally:
        provider.shutdown()  # nothing was queued, so nothing is sent


def test_environment_variable_enables_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env-collector:4318")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    settings = TelemetrySettings()
    assert tracing_enabled(settings)  # the default environ is os.environ
    provider = build_tracer_provider(settings)
    assert provider is not None
    try:
        _, otlp = exporter_of(provider)
        assert otlp._endpoint == "http://env-collector:4318/v1/traces"
        assert provider.resource.attributes["service.name"] == "graphgate"
    finally:
        provider.shutdown()


def test_instrumenting_a_serving_app_is_refused(
    tmp_path: Path, provider: TracerProvider,
) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path}/graphgate.sqlite"))
    app.middleware_stack = app.build_middleware_stack()
    with pytest.raises(RuntimeError, match="before the app starts"):
        instrument_app(app, provider)


def test_shutdown_tracer_provider_is_bounded() -> None:
    """A collector that never answers does not hold shutdown up past the timeout."""
    settings = TelemetrySettings(otlp_endpoint="http://127.0.0.1:9/v1/traces")

    class Stuck(InMemorySpanExporter):
        def export(self, spans: Any) -> Any:
            time.sleep(3)
            return super().export(spans)

    provider = build_tracer_provider(settings, {}, exporter=Stuck())
    assert provider is not None
    with provider.get_tracer("test").start_as_current_span("s"):
        pass
    started = time.monotonic()
    anyio.run(tracing.shutdown_tracer_provider, provider, 0.2)
    assert time.monotonic() - started < 2.5
    anyio.run(tracing.shutdown_tracer_provider, None)


def test_error_bodies_name_the_trace(
    tmp_path: Path, provider: TracerProvider, memory: InMemorySpanExporter,
    serve_app: Callable[[FastAPI], str],
) -> None:
    """A problem body carries the trace id, so a bug report leads to the trace."""
    url = serve_app(traced_app(tmp_path, provider))
    body = httpx.get(url + "/v1/threads/missing/state").json()
    [server] = wait_for(memory, named("GET /v1/threads/{thread_id}/state"))
    assert server.context is not None
    assert body["trace_id"] == format(server.context.trace_id, "032x")


def test_untraced_error_bodies_have_no_trace_id(tmp_path: Path,
                                                serve_app: Callable[[FastAPI], str]) -> None:
    url = serve_app(create_app(make_settings(f"sqlite:///{tmp_path}/g.sqlite")))
    assert "trace_id" not in httpx.get(url + "/v1/threads/missing/state").json()
