"""Keep secrets out of exported spans: query strings, captured headers, exception text.

The FastAPI instrumentation records the raw URL (query string included, where a client
may have put a key) and, for failed requests, the exception's message and traceback.
`_redact_server_span` rewrites the URL attributes as the server span starts; the
`RedactingSpanExporter` cleans every span again on its way out, whatever recorded it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

REDACTED: Final = "REDACTED"

_URL_ATTRIBUTES: Final = ("http.url", "url.full", "http.target")
_QUERY_ATTRIBUTES: Final = ("url.query",)
_HEADER_ATTRIBUTE = re.compile(r"^http\.(request|response)\.header\.")
_EXCEPTION_KEPT: Final = frozenset({"exception.type", "exception.escaped"})
_EXCEPTION_TEXT: Final = frozenset({"exception.message", "exception.stacktrace"})
# A status description is kept only when it is a bare identifier (an exception type or an
# error code); `ValueError: password=...` keeps `ValueError`.
_SAFE_DESCRIPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")


def redact_server_span(span: Span, scope: dict[str, Any]) -> None:
    """Rewrite the URL attributes the instrumentation set from the raw request.

    Runs right after the span starts, before anything else can read it. Must not raise:
    the instrumentation would record the error on the span.
    """
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None)
    if not isinstance(attributes, Mapping):
        return
    with contextlib.suppress(Exception):
        redacted = _redacted_url_attributes(attributes)
        if redacted:
            span.set_attributes(redacted)


def _redact_url(value: str) -> str:
    """Everything after the first `?` replaced; a decoded `%3F` in the path counts too."""
    base, sep, _ = value.partition("?")
    return f"{base}?{REDACTED}" if sep else value


def _redacted_url_attributes(attributes: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """The URL and query attributes that need rewriting, rewritten."""
    changed: dict[str, AttributeValue] = {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            changed[key] = _redact_url(value)
    for key in _QUERY_ATTRIBUTES:
        value = attributes.get(key)
        if value and value != REDACTED:
            changed[key] = REDACTED
    return changed


# --- export-side redaction ------------------------------------------------------------


class RedactingSpanExporter(SpanExporter):
    """Passes each span to `inner` with `redact_span` applied: nothing secret leaves."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redact_span(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """The span without query strings, captured headers or exception text.

    Returns the span itself when there is nothing to remove (the usual case).
    """
    attributes = dict(span.attributes or {})
    changed = _redacted_url_attributes(attributes)
    drop = [key for key in attributes if key in _EXCEPTION_TEXT or _HEADER_ATTRIBUTE.match(key)]
    events = list(span.events)
    clean_events = [_redact_event(event) for event in events]
    status = span.status
    description = status.description
    if description is not None:
        safe = description.partition(":")[0].strip()
        description = safe if _SAFE_DESCRIPTION.fullmatch(safe) else None
    if (not changed and not drop and description == status.description
            and all(a is b for a, b in zip(events, clean_events, strict=True))):
        return span
    attributes.update(changed)
    for key in drop:
        del attributes[key]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=clean_events,
        links=span.links,
        kind=span.kind,
        status=Status(status.status_code, description)
        if status.status_code is StatusCode.ERROR else status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _redact_event(event: Event) -> Event:
    attributes = dict(event.attributes or {})
    if event.name == "exception":
        keep = {k: v for k, v in attributes.items() if k in _EXCEPTION_KEPT}
    else:
        keep = {k: v for k, v in attributes.items() if k not in _EXCEPTION_TEXT}
        keep.update(_redacted_url_attributes(keep))
    if keep == attributes:
        return event
    return Event(event.name, keep, event.timestamp)
