"""Every Prometheus metric graphgate exports, defined in one place on one registry.

`Metrics(registry)` is built by the app factory (tests pass a fresh registry). Under
gunicorn, prometheus_client's multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, set
by the CLI before anything imports prometheus_client): every worker writes its values
to files there and `/metrics` sums them, so counters are totals across workers. Gauges
say how they combine (`multiprocess_mode`): `livesum` for things that add up across the
living workers (open streams, pool connections).

Label values are bounded: route templates (never raw paths; `unmatched` for 404s), graph
and node names from the served graphs, fixed reasons and outcomes. Never thread ids,
user ids, keys or tokens. docs/observability.md lists every metric.
"""

from __future__ import annotations

import platform
from typing import TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "graphgate"
# Request latency: a JSON API whose slow path is a model call.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Time to first event/token: model start-up dominates.
FIRST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Whole streams and runs: seconds to many minutes.
LONG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

STREAM_OUTCOMES = ("completed", "client_disconnected", "cancelled", "error", "timed_out")


class _Common(TypedDict):
    namespace: str
    registry: CollectorRegistry


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ns = _Common(namespace=NAMESPACE, registry=registry)

        # HTTP
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests by method, route template and status class.",
            ["method", "route", "status_class"], **ns)
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to the end of the response (event streams excluded: see stream_*).",
            ["method", "route"], buckets=LATENCY_BUCKETS, **ns)
        self.http_in_flight = Gauge(
            "http_requests_in_flight", "Requests being handled, streams included.",
            multiprocess_mode="livesum", **ns)

        # Streams
        self.streams_open = Gauge(
            "streams_open", "Open SSE streams.", ["graph"], multiprocess_mode="livesum", **ns)
        self.stream_first_event = Histogram(
            "stream_first_event_seconds", "From run start to the first graph event queued for "
            "sending (after `metadata`).",
            ["graph"], buckets=FIRST_BUCKETS, **ns)
        self.stream_first_token = Histogram(
            "stream_first_token_seconds", "From run start to the first message token sent.",
            ["graph"], buckets=FIRST_BUCKETS, **ns)
        self.stream_duration = Histogram(
            "stream_duration_seconds", "Whole stream, from run start to its end.",
            ["graph", "outcome"], buckets=LONG_BUCKETS, **ns)
        self.stream_events = Counter(
            "stream_events_total", "SSE events sent, by event name.", ["event"], **ns)
        self.streams = Counter(
            "streams_total", "Finished streams by outcome: completed, client_disconnected, "
            "cancelled (server shutdown), error, timed_out.", ["graph", "outcome"], **ns)
        self.stream_heartbeats = Counter(
            "stream_heartbeats_total", "Heartbeat comments sent on idle streams.", **ns)

        # Runs
        self.run_duration = Histogram(
            "run_duration_seconds", "Graph runs by graph and outcome (success, error, "
            "timeout, cancelled).", ["graph", "outcome"], buckets=LONG_BUCKETS, **ns)
        self.node_duration = Histogram(
            "node_duration_seconds", "Graph node (task) durations.", ["graph", "node"],
            buckets=LATENCY_BUCKETS, **ns)
        self.runs_refused = Counter(
            "runs_refused_total", "Runs not started, by reason (thread_busy, too_many_streams, "
            "draining).", ["reason"], **ns)

        # Persistence
        self.checkpointer_duration = Histogram(
            "checkpointer_operation_seconds", "Checkpointer calls by operation.",
            ["operation"], buckets=STORE_BUCKETS, **ns)
        self.db_pool_connections = Gauge(
            "db_pool_connections", "Postgres pool connections: size, in_use, idle, waiting "
            "(requests waiting for one).", ["state"], multiprocess_mode="livesum", **ns)
        self.storage_errors = Counter(
            "storage_errors_total", "Storage failures seen by clients (a 503, or an SSE error "
            "event), by store: checkpointer (checkpoints, leases, thread records) or "
            "rate_limit.", ["store"], **ns)

        # Security
        self.auth_failures = Counter(
            "auth_failures_total", "Refused credentials by reason (missing, invalid_key, "
            "expired, bad_alg, …).", ["reason"], **ns)
        self.rate_limited = Counter(
            "rate_limited_total", "Requests refused with 429, by limit (requests, runs, "
            "streams).", ["limit"], **ns)
        self.rate_limit_backend_up = Gauge(
            "rate_limit_backend_up", "1 when the rate-limit storage answered its last call.",
            multiprocess_mode="livemin", **ns)

        # Worker processes (multiprocess mode, where prometheus_client's process_* metrics
        # would describe only the worker that answered the scrape).
        self.workers = Gauge(
            "workers", "Worker processes alive (1 per worker).", multiprocess_mode="livesum",
            **ns)
        self.worker_memory = Gauge(
            "worker_resident_memory_bytes", "Resident memory of all living workers.",
            multiprocess_mode="livesum", **ns)
        self.worker_cpu = Gauge(
            "worker_cpu_seconds", "CPU time used by the living workers (user + system).",
            multiprocess_mode="livesum", **ns)
        self.worker_open_fds = Gauge(
            "worker_open_fds", "Open file descriptors of all living workers.",
            multiprocess_mode="livesum", **ns)

        # Build
        self.build_info = Gauge(
            "build_info", "Always 1; the labels say what is running.",
            ["version", "python", "langgraph"], multiprocess_mode="livemax", **ns)

    def set_build_info(self, version: str) -> None:
        import langgraph.version

        self.build_info.labels(version=version, python=platform.python_version(),
                               langgraph=langgraph.version.__version__).set(1)
