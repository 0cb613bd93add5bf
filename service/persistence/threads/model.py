"""The thread registry's record, its protocol, storage keys and argument checks."""

from __future__ import annotations

import builtins
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

# 128 bits of SHA-256: collisions between owners are out of reach, and the key stays short.
OWNER_NAMESPACE_CHARS = 32

STATUSES = frozenset({"idle", "busy", "interrupted", "error"})
SORT_COLUMNS = ("thread_id", "status", "created_at", "updated_at")
SORT_ORDERS = ("asc", "desc")


def owner_namespace(owner: str) -> str:
    """A fixed-length, opaque stand-in for the owner in storage keys.

    Hashed rather than embedded so that owner strings (tenant and user names) do not
    appear in checkpoint tables, and so that no owner can contain a '.' that shifts the
    boundary between namespace and thread id.
    """
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:OWNER_NAMESPACE_CHARS]


def storage_key(owner: str, thread_id: str) -> str:
    """The thread id the checkpointer sees for this owner's thread.

    Client thread ids are validated upstream as ^[A-Za-z0-9_-]{1,64}$; refusing '.' here
    as well means that, even if that validation were bypassed, a client-chosen id could
    never name a key inside another owner's namespace.
    """
    if "." in thread_id:
        raise ValueError("thread id must not contain '.'")
    return f"{owner_namespace(owner)}.{thread_id}"


@dataclass(frozen=True)
class ThreadRecord:
    # The first four fields keep their positions, for callers that build records by position.
    thread_id: str  # the client-facing id, not the storage key
    graph: str | None  # graph name of the last run; None until the first run
    created_at: datetime  # timezone-aware, UTC
    updated_at: datetime  # timezone-aware, UTC
    # A fresh object per record read: changing it changes nothing stored.
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "idle"  # one of STATUSES


class ThreadRegistry(Protocol):
    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        """Record a run: insert the thread if new (metadata {}, status idle), else set its
        graph and updated_at; with `status`, set that too, in the same statement."""

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        """A new idle thread with no graph yet; None, changing nothing, if this owner
        already has that thread id."""

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        """This owner's thread, or None (also when another owner has that thread id)."""

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        """Merge `metadata` into the thread's (top-level keys overwrite, null values are
        kept) and bump updated_at; the new record, or None if the owner has no such thread."""

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        """Set the thread's status and bump updated_at; nothing if there is no such thread."""

    async def search(
        self,
        owner: str,
        *,
        metadata: dict[str, Any] | None = None,
        status: str | None = None,
        ids: builtins.list[str] | None = None,
        limit: int,
        offset: int = 0,
        sort_by: str = "updated_at",
        sort_order: str = "desc",
    ) -> builtins.list[ThreadRecord]:
        """This owner's threads whose metadata contains `metadata`, with that status and
        among those ids, sorted by `sort_by` (one of SORT_COLUMNS) in `sort_order`
        ("asc" or "desc"), ties in thread id order, then paged."""

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        """How many threads `search` would find with these filters and no paging."""

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        """This owner's threads, most recently updated first, ties by thread id."""

    async def delete(self, owner: str, thread_id: str) -> bool:
        """Forget this owner's thread; True if there was one."""


def check_page(limit: int, offset: int) -> None:
    # Backends disagree on negative values (SQLite: "no limit", Postgres: an error).
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}")


def check_graph(graph: str) -> None:
    # SQLite stores "no graph yet" as '' (see SqliteThreads), so '' cannot be a name.
    if not graph:
        raise ValueError("graph name must not be empty")


def check_ids(ids: builtins.list[str]) -> None:
    # Postgres would reject anything but text in its text[] parameter; refuse it everywhere.
    if not all(isinstance(thread_id, str) for thread_id in ids):
        raise TypeError("ids must be strings")


def check_sort(sort_by: str, sort_order: str) -> None:
    if sort_by not in SORT_COLUMNS:
        raise ValueError(f"sort_by must be one of {list(SORT_COLUMNS)}")
    if sort_order not in SORT_ORDERS:
        raise ValueError(f"sort_order must be one of {list(SORT_ORDERS)}")



def utc_now() -> datetime:
    return datetime.now(UTC)
