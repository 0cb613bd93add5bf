"""docs/observability.md describes every metric and every log field the code produces.

The lists are taken from the code, not copied: the metric families `Metrics` registers,
the fields `AccessLogMiddleware` really writes, and every structlog event (with its
fields) found in `service/`. Adding a metric, a log event or a field without documenting
it fails here.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from service.middleware import access_log
from service.middleware.access_log import ACCESS_FIELDS, AccessLogMiddleware
from service.middleware.metrics import METHODS, UNMATCHED
from service.observability import metrics as metrics_module
from service.observability.metrics import STREAM_OUTCOMES, Metrics
from service.persistence.instrumented import OPERATIONS

ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = ROOT / "docs" / "observability.md"
SERVICE = ROOT / "service"
LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Keyword arguments of a log call that are not fields of the line.
NOT_FIELDS = frozenset({"exc_info", "stack_info", "stacklevel"})


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def mentioned(doc: str, name: str) -> bool:
    """`name` as a whole token (so `graphgate_streams` is not found in `..._streams_open`)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", doc) is not None


def table_rows(doc: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is `first_cell` in backticks."""
    pattern = rf"^\| `{re.escape(first_cell)}` \|.*$"
    return [[cell.strip() for cell in match.group(0).strip("|").split("|")]
            for match in re.finditer(pattern, doc, re.MULTILINE)]


def table_row(doc: str, first_cell: str) -> str | None:
    """The first such row, as one string (None if there is none)."""
    rows = table_rows(doc, first_cell)
    return " | ".join(rows[0]) if rows else None


# --- metrics ------------------------------------------------------------------------


def _wrappers() -> list[MetricWrapperBase]:
    return [value for value in vars(Metrics(CollectorRegistry())).values()
            if isinstance(value, MetricWrapperBase)]


def exported_metrics() -> list[tuple[str, str, tuple[str, ...]]]:
    """(documented name, type, label names) of every family `Metrics` registers."""
    metrics = Metrics(CollectorRegistry())
    labels = {wrapper._name: tuple(wrapper._labelnames) for wrapper in _wrappers()}
    found = []
    for family in metrics.registry.collect():
        # Counter families are named without `_total`; the doc names the series.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        found.append((name, family.type, labels.get(family.name, ())))
    return found


def test_metrics_are_found() -> None:
    names = [name for name, _, _ in exported_metrics()]
    assert len(names) >= 20
    assert "graphgate_http_requests_total" in names
    assert "graphgate_http_request_duration_seconds" in names


@pytest.mark.parametrize(("name", "kind", "labels"), exported_metrics(),
                         ids=lambda value: value if isinstance(value, str) else None)
def test_every_metric_is_documented_with_its_type_and_labels(
    doc: str, name: str, kind: str, labels: tuple[str, ...],
) -> None:
    assert mentioned(doc, name), f"{name} is not in {DOC_PATH.name}"
    rows = [cells for cells in table_rows(doc, name)
            if len(cells) >= 4 and cells[1] in ("counter", "gauge", "histogram")]
    assert len(rows) == 1, f"{name} needs one row in the metric reference table"
    [cells] = rows
    assert cells[1] == kind, f"{name} is a {kind}, the doc says {cells[1]}"
    for label in labels:
        assert f"`{label}`" in cells[2], f"{name}: label {label} is not documented"
    if not labels:
        assert cells[2] == "none", f"{name} has no labels, the doc lists {cells[2]}"


def test_gauge_multiprocess_modes_are_documented(doc: str) -> None:
    gauges = [w for w in _wrappers() if w._type == "gauge"]
    assert gauges
    for gauge in gauges:
        mode = gauge._multiprocess_mode
        rows = [cells for cells in table_rows(doc, gauge._name) if cells[1] == f"`{mode}`"]
        assert rows, f"{gauge._name}: multiprocess_mode {mode} is not in the gauge table"


def test_label_values_are_documented(doc: str) -> None:
    values = [*STREAM_OUTCOMES, *OPERATIONS, *sorted(METHODS), "OTHER", UNMATCHED,
              "thread_busy", "too_many_streams", "draining", "requests", "runs", "streams",
              "checkpointer", "rate_limit", "size", "in_use", "idle", "waiting",
              "success", "error", "timeout", "cancelled"]
    missing = [value for value in values if f"`{value}`" not in doc]
    assert not missing, f"label values missing from the doc: {missing}"


def test_bucket_boundaries_are_documented(doc: str) -> None:
    for name in ("LATENCY_BUCKETS", "FIRST_BUCKETS", "LONG_BUCKETS", "STORE_BUCKETS"):
        buckets = getattr(metrics_module, name)
        line = ", ".join(f"{bound:g}" for bound in buckets)
        assert f"| {line} |" in doc, f"{name} ({line}) is not in the bucket table"


def test_auth_failure_reasons_are_documented(doc: str) -> None:
    reasons = {"missing"}
    for path in (SERVICE / "security").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "AuthFailure" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                reasons.add(node.args[0].value)
    # python-jose's errors, mapped by service.security.jwt._reason.
    reasons |= {"expired", "bad_audience", "bad_issuer", "missing_claim", "bad_signature",
                "not_yet_valid", "invalid"}
    assert len(reasons) > 15
    missing = sorted(reason for reason in reasons if f"`{reason}`" not in doc)
    assert not missing, f"auth failure reasons missing from the doc: {missing}"


# --- the access line -----------------------------------------------------------------


class _Capture:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    scope["state"][access_log.ACCESS_STATE_KEY] = dict.fromkeys(ACCESS_FIELDS, "x")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _stream(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b": hi\n\n", "more_body": True})


async def _boom(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("boom")


def access_lines() -> list[tuple[str, dict[str, Any]]]:
    """What AccessLogMiddleware writes for a plain response, a stream and a crash."""
    capture = _Capture()

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            return None

        for app in (_ok, _stream, _boom):
            scope = {"type": "http", "method": "GET", "path": "/x", "headers": [],
                     "client": ("203.0.113.7", 1234), "state": {"request_id": "r"}}
            with contextlib.suppress(RuntimeError):
                await AccessLogMiddleware(app, logger=capture)(scope, receive, send)

    asyncio.run(run())
    return capture.lines


def test_every_access_line_field_is_documented(doc: str) -> None:
    lines = access_lines()
    assert {event for event, _ in lines} == {"access", "stream_finished"}
    fields = set(ACCESS_FIELDS)
    for _, line in lines:
        fields |= set(line)
    # The fixed fields really are written, and the route-recorded ones pass through.
    assert {"method", "route", "status", "duration_ms", "request_id", "principal",
            "client_ip", "error", *ACCESS_FIELDS} <= fields
    missing = sorted(field for field in fields if table_row(doc, field) is None)
    assert not missing, f"access line fields without a row in the access table: {missing}"
    assert "`access`" in doc and "`stream_finished`" in doc


# --- every other log event ----------------------------------------------------------


def _event_names(arg: ast.expr) -> list[str]:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value] if EVENT_NAME.fullmatch(arg.value) else []
    if isinstance(arg, ast.IfExp):
        return _event_names(arg.body) + _event_names(arg.orelse)
    return []


def log_calls() -> dict[str, set[str]]:
    """Every structlog event in service/ (snake_case name) and the fields it is given.

    Fields bound with `.bind(...)` or `bind_contextvars(...)` are collected under "".
    """
    events: dict[str, set[str]] = {"": set()}
    for path in sorted(SERVICE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            keywords = {k.arg for k in node.keywords if k.arg is not None}
            if attr in ("bind", "bind_contextvars"):
                events[""] |= keywords
                continue
            if attr not in LEVELS or not node.args:
                continue
            for name in _event_names(node.args[0]):
                fields = events.setdefault(name, set())
                fields |= keywords - NOT_FIELDS
                if "exc_info" in keywords:
                    fields.add("exception")
    return events


def test_log_events_are_found() -> None:
    events = log_calls()
    for name in ("access", "stream_finished", "auth_failed", "auth_missing", "rate_limited",
                 "ratelimit_backend_down", "run_failed", "run_timed_out", "lease_lost",
                 "storage_unavailable", "unhandled_exception", "api_keys_reloaded",
                 "api_keys_reload_failed", "jwks_refresh_failed", "stream_send_timeout"):
        assert name in events, name


def test_every_log_event_and_field_is_documented(doc: str) -> None:
    events = log_calls()
    bound = events.pop("")
    missing_events = sorted(name for name in events if f"`{name}`" not in doc)
    assert not missing_events, f"log events missing from the doc: {missing_events}"
    missing_fields = sorted(
        f"{name}.{field}" for name, fields in events.items() if name != "access"
        for field in fields
        if (row := table_row(doc, name)) is not None and f"`{field}`" not in row
        and not (field in bound and f"`{field}`" in doc)
    )
    assert not missing_fields, f"log fields missing from the events table: {missing_fields}"
    undocumented_rows = sorted(
        name for name in events
        if name not in ("access", "stream_finished") and table_row(doc, name) is None)
    assert not undocumented_rows, f"log events without a row in the events table: " \
        f"{undocumented_rows}"


def test_common_fields_are_documented(doc: str) -> None:
    bound = log_calls()[""]
    for field in {"event", "level", "logger", "timestamp", "request_id", "principal",
                  "trace_id", "span_id", "exception", *bound}:
        assert f"`{field}`" in doc, field
