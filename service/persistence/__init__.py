"""Checkpointers, migrations, run leases and the thread registry, made in the app lifespan."""

from service.persistence.checkpointer import Persistence, StorageUnavailable, open_persistence
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
    "ThreadRecord",
    "ThreadRegistry",
    "open_persistence",
    "owner_namespace",
    "storage_key",
]
