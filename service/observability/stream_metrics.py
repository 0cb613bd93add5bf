"""Per-stream and per-run measurements, fed into `Metrics`.

`StreamRecorder` follows one SSE stream: the route reports each event it sends, the
response reports heartbeats and how the stream ended, and the run says how the graph
went; together they give the stream's outcome:

- `completed`: the run finished and every event was sent;
- `error` / `timed_out`: the run failed or hit `max_duration_s` (the client got an
  `error` event, then `end`);
- `client_disconnected`: the client hung up or stopped reading;
- `cancelled`: the server ended it (shutdown).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service.observability.metrics import Metrics
from service.streaming.sse import Ending

_RUN_OUTCOMES = {"success": "completed", "error": "error", "timeout": "timed_out"}


class StreamRecorder:
    def __init__(self, metrics: Metrics, graph: str, *, run_outcome: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic,
                 access: dict[str, Any] | None = None) -> None:
        self.metrics = metrics
        self.graph = graph
        self.run_outcome = run_outcome
        self.clock = clock
        self.started = clock()
        self.first_event = self.first_token = False
        self.events_sent = 0
        self._event_counters: dict[str, Any] = {}
        # Fields for the request's access log line (scope["state"]["access"]).
        self.access = access if access is not None else {}
        metrics.streams_open.labels(graph).inc()

    def event(self, name: str, *, token: bool = False) -> None:
        # Called once per token: the labelled child is looked up once per event name.
        self.events_sent += 1
        counter = self._event_counters.get(name)
        if counter is None:
            counter = self._event_counters[name] = self.metrics.stream_events.labels(name)
        counter.inc()
        # `metadata` goes out before the graph starts; the first event of the graph's is
        # what a client waits for.
        if not self.first_event and name != "metadata":
            self.first_event = True
            self.metrics.stream_first_event.labels(self.graph).observe(self.clock() - self.started)
        if token and not self.first_token:
            self.first_token = True
            self.metrics.stream_first_token.labels(self.graph).observe(self.clock() - self.started)

    def heartbeat(self) -> None:
        self.metrics.stream_heartbeats.inc()

    def closed(self, ending: Ending) -> None:
        if ending == "completed":
            outcome = _RUN_OUTCOMES.get(self.run_outcome(), "cancelled")
        elif ending == "cancelled":
            outcome = "cancelled"
        else:
            outcome = "client_disconnected"
        metrics = self.metrics
        metrics.streams_open.labels(self.graph).dec()
        metrics.streams.labels(self.graph, outcome).inc()
        metrics.stream_duration.labels(self.graph, outcome).observe(self.clock() - self.started)
        self.access.update(stream_outcome=outcome, events_sent=self.events_sent)


class RunMetrics:
    """The executor's `RunObserver`: run and node durations."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def run_finished(self, graph: str, outcome: str, seconds: float) -> None:
        self.metrics.run_duration.labels(graph, outcome).observe(seconds)

    def node_finished(self, graph: str, node: str, seconds: float) -> None:
        self.metrics.node_duration.labels(graph, node).observe(seconds)
