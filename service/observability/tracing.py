"""OpenTelemetry tracing: off unless an OTLP endpoint is configured.

`build_tracer_provider` returns None unless `[telemetry] otlp_endpoint`,
`$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `$OTEL_EXPORTER_OTLP_ENDPOINT` is set (and
`$OTEL_SDK_DISABLED` is not `true`). With None nothing is instrumented, `run_span` is a
shared `nullcontext` and `current_trace_ids` is one context-variable read; the OTLP
exporter and the FastAPI instrumentation are not even imported. The provider is never made
global (`trace.set_tracer_provider`): the app passes it to what needs it.

What a span may hold (the security checklist, sections 1-2):
- No query strings. Credentials arrive in them (`?token=`, `?api_key=`), and the ASGI
  instrumentation copies the query, percent-decoded, into `http.url` (`url.query` with the new
  semantic conventions). A server-request hook rewrites those attributes before the span
  can end, and the exporter wrapper redacts them again on every span that leaves.
- No headers. Capture is pinned to a pattern matching no header name, which makes the
  instrumentation ignore `OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_*`, and every
  captured value would be `[REDACTED]` anyway; the exporter also drops any
  `http.*.header.*` attribute.
- No exception text. The instrumentation records every exception that crosses it with
  its message and traceback (`record_exception`, status `Type: message`), and messages
  can hold SQL, hostnames or secrets. The exporter wrapper keeps the exception's type only.
- FastAPI's native telemetry stays off (`FASTAPI_TELEMETRY_OFF`): it would record the
  query unredacted and export exception text.
- Span names are route templates (`GET /v1/threads/{thread_id}/state`), never raw paths;
  no per-chunk `http send` spans (a stream of any length makes one server span).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service import __version__
from service.observability.span_redaction import (
    RedactingSpanExporter,
    redact_server_span,
    redact_span,
)
from service.security.paths import METRICS_PATH, PROBE_PATHS
from service.settings.security import TelemetrySettings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.telemetry import TelemetryConfig
    from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "FASTAPI_TELEMETRY_OFF",
    "RUN_ERROR_CODE",
    "RUN_OUTCOME",
    "RedactingSpanExporter",
    "add_trace_ids",
    "build_tracer_provider",
    "current_trace_ids",
    "instrument_app",
    "otlp_traces_endpoint",
    "redact_span",
    "run_span",
    "set_run_outcome",
    "setup_tracing",
    "shutdown_tracer_provider",
    "tracing_enabled",
]

TRACER_NAME: Final = "graphgate"

RUN_GRAPH: Final = "graphgate.graph"
RUN_THREAD_ID: Final = "graphgate.thread_id"
RUN_ID: Final = "graphgate.run_id"
RUN_OUTCOME: Final = "graphgate.run.outcome"
RUN_ERROR_CODE: Final = "graphgate.run.error_code"
ERROR_TYPE: Final = "error.type"

ENV_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"


# Never traced: probes and scrapes would drown the real traffic. Matched by the
# instrumentation against `scheme://host/path` (no query), so anchored on both ends: a
# thread called "healthz" (`DELETE /v1/threads/healthz`) is still traced.
_UNTRACED_PATHS = (*PROBE_PATHS, METRICS_PATH)
EXCLUDED_URLS: Final = ",".join(
    rf"^https?://[^/]*{re.escape(path)}$" for path in _UNTRACED_PATHS
)

# Header capture: the instrumentation falls back to the OTEL_INSTRUMENTATION_HTTP_CAPTURE_
# HEADERS_* variables when the list it is given is empty, so it is given one pattern that
# matches no header name ((?!) always fails), and the sanitizer masks every name.
_CAPTURE_NO_HEADERS: Final = ["(?!)"]
_SANITIZE_ALL_HEADERS: Final = [".*"]

# Attributes that may carry a URL or target with its query string, old and new conventions.


# FastAPI's own (native) telemetry, for `FastAPI(telemetry=...)`: all off, always. It turns
# itself on whenever a global OpenTelemetry provider exists, or on its own from the
# environment ($FASTAPI_OTEL_AUTO_CONFIGURE=true with $OTEL_EXPORTER_OTLP_ENDPOINT), and
# then records `url.query` unredacted and exports exception messages and tracebacks as
# logs. graphgate traces through `instrument_app` only.
FASTAPI_TELEMETRY_OFF: Final[TelemetryConfig] = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


# --- configuration --------------------------------------------------------------------


def otlp_traces_endpoint(
    settings: TelemetrySettings, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The traces endpoint to export to, or None for tracing off.

    `[telemetry] otlp_endpoint` wins and is used as given (a full `/v1/traces` URL); else
    the standard variables, resolved as the OTLP exporter resolves them: the traces one as
    given, the generic one with `/v1/traces` appended.
    """
    if settings.otlp_endpoint and settings.otlp_endpoint.strip():
        return settings.otlp_endpoint.strip()
    traces = environ.get(ENV_TRACES_ENDPOINT, "").strip()
    if traces:
        return traces
    base = environ.get(ENV_ENDPOINT, "").strip()
    if base:
        return f"{base.removesuffix('/')}/v1/traces"
    return None


def tracing_enabled(settings: TelemetrySettings, environ: Mapping[str, str] = os.environ) -> bool:
    """An endpoint is configured and the standard kill switch `OTEL_SDK_DISABLED` is off."""
    if environ.get(ENV_SDK_DISABLED, "").strip().lower() == "true":
        return False
    return otlp_traces_endpoint(settings, environ) is not None


def build_tracer_provider(
    settings: TelemetrySettings,
    environ: Mapping[str, str] = os.environ,
    *,
    exporter: SpanExporter | None = None,
) -> TracerProvider | None:
    """An SDK provider batching redacted spans to OTLP/HTTP; None when tracing is off.

    `exporter` replaces the OTLP exporter (tests); it is wrapped and batched the same way.
    The other OTLP options (headers, timeout, TLS, compression) come from the standard
    `OTEL_EXPORTER_OTLP_*` variables, read by the exporter itself.
    """
    if not tracing_enabled(settings, environ):
        return None
    if exporter is None:
        # Imported here: protobuf and requests cost ~60 ms, paid only when tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_traces_endpoint(settings, environ))
    attributes: dict[str, AttributeValue] = {
        "service.version": __version__,
        **settings.resource_attributes,
        "service.name": settings.service_name,
    }
    provider = TracerProvider(
        # Configured values win over $OTEL_RESOURCE_ATTRIBUTES / $OTEL_SERVICE_NAME, which
        # Resource.create merges underneath.
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(RedactingSpanExporter(exporter)))
    return provider


async def shutdown_tracer_provider(
    provider: TracerProvider | None, timeout_s: float = 5.0
) -> None:
    """Flush what is queued and stop the exporter thread, without blocking the event loop.

    Waits at most about `timeout_s`: an unreachable collector must not hold up shutdown.
    """
    if provider is None:
        return

    def close() -> None:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()

    with anyio.move_on_after(timeout_s + 1, shield=True):
        await anyio.to_thread.run_sync(close, abandon_on_cancel=True)


# --- HTTP server spans ----------------------------------------------------------------


def setup_tracing(
    app: FastAPI, settings: TelemetrySettings, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """`build_tracer_provider`, then `instrument_app` if tracing is on; the provider or None."""
    provider = build_tracer_provider(settings, environ)
    if provider is not None:
        instrument_app(app, provider)
    return provider


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    """Trace every request but the probes and /metrics: one SERVER span per request.

    Call before the app serves its first request (the middleware stack is built then).
    """
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    if app.middleware_stack is not None:
        raise RuntimeError("instrument_app must be called before the app starts serving")
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        raise RuntimeError("the app is already instrumented (opentelemetry-instrument?)")
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        # HTTP metrics come from prometheus-client; no second set.
        meter_provider=NoOpMeterProvider(),
        excluded_urls=EXCLUDED_URLS,
        # No span per ASGI message: an SSE stream would make one per chunk.
        exclude_spans=["receive", "send"],
        server_request_hook=redact_server_span,
        http_capture_headers_server_request=_CAPTURE_NO_HEADERS,
        http_capture_headers_server_response=_CAPTURE_NO_HEADERS,
        http_capture_headers_sanitize_fields=_SANITIZE_ALL_HEADERS,
    )


# --- graph runs -----------------------------------------------------------------------

_NO_RUN_SPAN: Final = contextlib.nullcontext(None)


def run_span(
    provider: TracerProvider | None, *, graph: str, thread_id: str, run_id: str
) -> contextlib.AbstractContextManager[Span | None]:
    """A current INTERNAL span `graph.run {graph}` around one graph run.

    Yields the span (None when tracing is off: a shared no-op). Set the outcome with
    `set_run_outcome` before leaving. Leaving with an exception records its type only
    (never its message) and, if no outcome was set, `cancelled` for a cancellation or
    `error` for anything else. Enter and leave in the same task (the span is attached to
    the task's context).
    """
    if provider is None:
        return _NO_RUN_SPAN
    return _recording_run_span(provider, graph, thread_id, run_id)


@contextlib.contextmanager
def _recording_run_span(
    provider: TracerProvider, graph: str, thread_id: str, run_id: str
) -> Iterator[Span]:
    tracer = provider.get_tracer(TRACER_NAME, __version__)  # cached by the provider
    span = tracer.start_span(
        f"graph.run {graph}",
        kind=SpanKind.INTERNAL,
        attributes={RUN_GRAPH: graph, RUN_THREAD_ID: thread_id, RUN_ID: run_id},
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        if span.is_recording():
            outcome_set = RUN_OUTCOME in (getattr(span, "attributes", None) or {})
            if isinstance(exc, Exception):
                if not outcome_set:
                    span.set_attribute(RUN_OUTCOME, "error")
                _record_exception_type(span, exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            elif not outcome_set:
                # Cancelled (client gone, shutdown): not a failure of the run.
                span.set_attribute(RUN_OUTCOME, "cancelled")
        raise
    finally:
        otel_context.detach(token)
        span.end()


def set_run_outcome(
    span: Span | None, outcome: str, *, error_code: str | None = None,
    exc: BaseException | None = None,
) -> None:
    """Record how the run ended: `success`, `error`, `timeout`, `cancelled`.

    `error_code` is the client-safe code (e.g. `graph_error`); `exc` contributes its type
    only. Any outcome other than success/cancelled, or an error code, sets status ERROR.
    """
    if span is None or not span.is_recording():
        return
    span.set_attribute(RUN_OUTCOME, outcome)
    if error_code:
        span.set_attribute(RUN_ERROR_CODE, error_code)
    if exc is not None:
        _record_exception_type(span, exc)
    elif error_code:
        span.set_attribute(ERROR_TYPE, error_code)
    if error_code or outcome not in ("success", "cancelled"):
        span.set_status(Status(StatusCode.ERROR, error_code or outcome))


def _record_exception_type(span: Span, exc: BaseException) -> None:
    """What `record_exception` records, minus the message and traceback."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else (
        f"{cls.__module__}.{cls.__qualname__}")
    span.set_attribute(ERROR_TYPE, name)
    span.add_event("exception", {"exception.type": name})


# --- correlation ----------------------------------------------------------------------


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, 32 hex; span id, 16 hex) of the current span, if it is sampled.

    Sampled rather than recording: the server span ends with the last byte of the
    response, just before the request's access line is written, and that line must still
    name it.
    """
    ctx = trace.get_current_span().get_span_context()
    if not (ctx.is_valid and ctx.trace_flags.sampled):
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


def add_trace_ids(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: `trace_id` and `span_id` on lines logged inside a span."""
    ids = current_trace_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict
