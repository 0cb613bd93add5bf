"""What the lifespan builds and routes receive (through `service.api.deps`)."""

from __future__ import annotations

from dataclasses import dataclass

from service.graphs.loader import GraphRegistry
from service.lifecycle import Lifecycle
from service.observability.metrics import Metrics
from service.persistence import Persistence
from service.security.authenticator import Authenticator
from service.security.rate_limits import RateLimits
from service.security.stream_slots import StreamSlots
from service.settings import Settings
from service.streaming.executor import RunExecutor
from service.streaming.run_manager import RunManager
from service.streaming.send_watchdog import SendWatchdog


@dataclass(frozen=True)
class Resources:
    settings: Settings
    persistence: Persistence
    graphs: GraphRegistry
    executor: RunExecutor
    lifecycle: Lifecycle
    authenticator: Authenticator
    rate_limits: RateLimits
    stream_slots: StreamSlots
    metrics: Metrics
    # Agent Server protocol runs, each in a task of its own (see RunManager).
    runs: RunManager
    # Times every open event stream's writes from one task (see SendWatchdog).
    send_watchdog: SendWatchdog
