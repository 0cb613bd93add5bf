"""Metrics that are read rather than counted: pool gauges, checkpointer timings.

`sample_periodically` runs in each worker's lifespan. Under gunicorn every worker must
keep its own gauges fresh: a scrape reaches one worker, and `/metrics` sums the values
all living workers last wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import anyio
import structlog
from prometheus_client import Histogram

from service.observability.metrics import Metrics
from service.persistence.instrumented import OPERATIONS

log = structlog.get_logger("graphgate.metrics")

SAMPLE_INTERVAL_S = 5.0


class CheckpointerTimer:
    """The persistence layer's `StoreObserver`: checkpointer call latency by operation."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.children = {op: histogram.labels(operation=op) for op in OPERATIONS}

    def observe(self, operation: str, seconds: float) -> None:
        child = self.children.get(operation) or self.histogram.labels(operation=operation)
        child.observe(seconds)


def sample_pool(metrics: Metrics, pool_stats: Callable[[], dict[str, int]] | None) -> None:
    if pool_stats is None:
        return
    for state, value in pool_stats().items():
        metrics.db_pool_connections.labels(state=state).set(value)


def sample_process(metrics: Metrics) -> None:
    """This worker's memory, CPU and descriptors (Linux /proc; skipped elsewhere)."""
    times = os.times()
    metrics.worker_cpu.set(times.user + times.system)
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        metrics.worker_memory.set(pages * os.sysconf("SC_PAGE_SIZE"))
        metrics.worker_open_fds.set(len(os.listdir("/proc/self/fd")))
    except (OSError, ValueError, IndexError):
        pass


async def sample_periodically(metrics: Metrics, pool_stats: Callable[[], dict[str, int]] | None,
                              interval_s: float = SAMPLE_INTERVAL_S) -> None:
    """Refresh the sampled gauges until cancelled (then zero this worker's share)."""
    metrics.workers.set(1)
    try:
        while True:
            try:
                sample_pool(metrics, pool_stats)
                sample_process(metrics)
            except Exception as exc:  # a sampler must never take the worker down
                log.warning("metrics_sample_failed", exc_type=type(exc).__name__)
            await anyio.sleep(interval_s)
    finally:
        if pool_stats is not None:
            with contextlib.suppress(Exception):
                for state in pool_stats():
                    metrics.db_pool_connections.labels(state=state).set(0)
