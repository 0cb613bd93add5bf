"""Checkpointers, migrations, run leases and the thread registry, made in the app lifespan."""

from service.persistence.checkpointer import Persistence, StorageUnavailable, open_persistence
from service.persistence.instrumented import StoreObserver, TimedSaver, pool_stats
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
    "MemoryThreads",
    "Persistence",
    "PostgresThreads",
    "SqliteThreads",
    "StorageUnavailable",
    "StoreObserver",
    "ThreadRecord",
    "ThreadRegistry",
    "TimedSaver",
    "open_persistence",
    "owner_namespace",
    "pool_stats",
    "storage_key",
]
