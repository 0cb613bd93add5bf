"""Checkpointers, migrations and thread run leases, created in the app lifespan."""

from service.persistence.checkpointer import Persistence, StorageUnavailable, open_persistence

__all__ = ["Persistence", "StorageUnavailable", "open_persistence"]
