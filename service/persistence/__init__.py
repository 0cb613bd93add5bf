"""Checkpointers, migrations, run leases, the thread and run registries and the run event
log, made in the app lifespan."""

from service.persistence.checkpointer import Persistence, StorageUnavailable, open_persistence
from service.persistence.event_log import (
    EventLog,
    LoggedEvent,
    MemoryEventLog,
    PostgresEventLog,
    SqliteEventLog,
    StreamFinished,
)
from service.persistence.instrumented import StoreObserver, TimedSaver, pool_stats
from service.persistence.runs import (
    RUN_STATUSES,
    MemoryRuns,
    PostgresRuns,
    RunExists,
    RunRecord,
    RunRegistry,
    SqliteRuns,
)
from service.persistence.threads import (
    MemoryThreads,
    PostgresThreads,
    SqliteThreads,
    ThreadRecord,
    ThreadRegistry,
    owner_namespace,
    storage_key,
)

__all__ = [
    "RUN_STATUSES",
    "EventLog",
    "LoggedEvent",
    "MemoryEventLog",
    "MemoryRuns",
    "MemoryThreads",
    "Persistence",
    "PostgresEventLog",
    "PostgresRuns",
    "PostgresThreads",
    "RunExists",
    "RunRecord",
    "RunRegistry",
    "SqliteEventLog",
    "SqliteRuns",
    "SqliteThreads",
    "StorageUnavailable",
    "StoreObserver",
    "StreamFinished",
    "ThreadRecord",
    "ThreadRegistry",
    "TimedSaver",
    "open_persistence",
    "owner_namespace",
    "pool_stats",
    "storage_key",
]
