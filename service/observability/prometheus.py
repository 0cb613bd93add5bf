"""prometheus_client set-up: one process, or gunicorn's many (multiprocess mode).

prometheus_client picks how it stores values when it is first imported: with
PROMETHEUS_MULTIPROC_DIR set, every worker writes them to files there. So the CLI calls
`prepare_multiprocess_dir` before anything imports prometheus_client (user graphs might),
and gunicorn's master marks each exited worker dead so its live gauges stop counting.
Importing this module must not import prometheus_client (the CLI imports it to set the
directory), so every function imports it itself. Nothing here runs at import time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_VAR) or None


def prepare_multiprocess_dir(configured: Path | None) -> Path:
    """Make (or empty) the directory workers write metrics to, and export its path.

    Stale files from a previous run would be summed into the new one's totals, so the
    directory is emptied every start.
    """
    chosen = configured or (Path(os.environ[MULTIPROC_VAR]) if os.environ.get(MULTIPROC_VAR)
                            else None)
    if chosen is None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108 - tmpfs
        chosen = Path(tempfile.mkdtemp(prefix="graphgate-metrics-", dir=base))
    chosen.mkdir(parents=True, exist_ok=True)
    for stale in chosen.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_VAR] = str(chosen)
    return chosen


def mark_worker_dead(pid: int) -> None:
    """gunicorn `child_exit` hook: drop a dead worker's live gauges."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def new_registry() -> CollectorRegistry:
    """The registry the app's metrics are defined on.

    In one process it also carries the process and platform collectors; in multiprocess
    mode those would describe only the scraped worker, so they are left out.
    """
    from prometheus_client import (
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
        disable_created_metrics,
    )

    # `_created` series double the series count and are absent in multiprocess mode
    # anyway; one behaviour in both modes (a process-wide prometheus_client switch).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    if not multiprocess_dir():
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition for `/metrics`: all workers' values in multiprocess mode."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if multiprocess_dir():
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
