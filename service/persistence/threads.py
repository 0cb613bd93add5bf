"""Thread registry: which owner each thread belongs to, for per-owner listing and isolation.

The checkpointer knows nothing of owners; it files checkpoints under whatever thread id
it is given. So the service never hands it a client's thread id as is: it hands it
`storage_key(owner, thread_id)`, which puts every owner's threads in a namespace of their
own. This registry records, per (owner, client thread id), the graph of the last run and
when the thread was created and last used, so an owner can list their threads without
scanning (or being able to see) anyone else's checkpoints.
"""

from __future__ import annotations

import builtins
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import aiosqlite

from service.persistence.leases import Pool

# 128 bits of SHA-256: collisions between owners are out of reach, and the key stays short.
OWNER_NAMESPACE_CHARS = 32


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
    thread_id: str  # the client-facing id, not the storage key
    graph: str  # graph name of the last run
    created_at: datetime  # timezone-aware, UTC
    updated_at: datetime  # timezone-aware, UTC


class ThreadRegistry(Protocol):
    async def touch(self, owner: str, thread_id: str, graph: str) -> None:
        """Record a run: insert the thread if new, else set its graph and updated_at."""

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        """This owner's thread, or None (also when another owner has that thread id)."""

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        """This owner's threads, most recently updated first, ties by thread id."""

    async def delete(self, owner: str, thread_id: str) -> bool:
        """Forget this owner's thread; True if there was one."""


def _check_page(limit: int, offset: int) -> None:
    # Backends disagree on negative values (SQLite: "no limit", Postgres: an error).
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MemoryThreads:
    """For `memory:` storage, which is per-process anyway."""

    def __init__(self, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._threads: dict[tuple[str, str], ThreadRecord] = {}

    async def touch(self, owner: str, thread_id: str, graph: str) -> None:
        now = self._clock()
        held = self._threads.get((owner, thread_id))
        if held is None:
            self._threads[owner, thread_id] = ThreadRecord(thread_id, graph, now, now)
        else:
            updated = max(held.updated_at, now)
            self._threads[owner, thread_id] = replace(held, graph=graph, updated_at=updated)

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        return self._threads.get((owner, thread_id))

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        _check_page(limit, offset)
        mine = [record for (o, _), record in self._threads.items() if o == owner]
        # Two stable sorts: by thread id, then newest first, keeping ties in id order.
        mine.sort(key=lambda record: record.thread_id)
        mine.sort(key=lambda record: record.updated_at, reverse=True)
        return mine[offset : offset + limit]

    async def delete(self, owner: str, thread_id: str) -> bool:
        return self._threads.pop((owner, thread_id), None) is not None


# Timestamps are UTC epoch seconds (REAL, as in the lease table): they sort numerically,
# and a double still resolves well under a microsecond for present-day times.
SQLITE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_threads (
        owner TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        graph TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (owner, thread_id)
    )
    """,
    # Serves list(): one owner's rows, already in the order they are returned.
    "CREATE INDEX IF NOT EXISTS graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
)

def _sqlite_record(row: Any) -> ThreadRecord:
    thread_id, graph, created_at, updated_at = row
    return ThreadRecord(
        thread_id,
        graph,
        datetime.fromtimestamp(created_at, UTC),
        datetime.fromtimestamp(updated_at, UTC),
    )


class SqliteThreads:
    """The registry in the SQLite file, so several local workers share it.

    Runs on the autocommit connection the leases use, not the checkpointer's: that one
    runs its own transactions and must not have ours committed in the middle of them.
    Every operation is a single statement, so autocommit makes each one atomic.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    async def setup(self) -> None:
        for statement in SQLITE_SCHEMA:
            await self._conn.execute(statement)

    async def touch(self, owner: str, thread_id: str, graph: str) -> None:
        now = self._clock()
        # max(): a wall clock stepped back (NTP) or another worker's slightly slower
        # clock must not move a thread backwards in the listing.
        await self._conn.execute(
            "INSERT INTO graphgate_threads (owner, thread_id, graph, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (owner, thread_id) DO UPDATE SET graph = excluded.graph,"
            " updated_at = max(graphgate_threads.updated_at, excluded.updated_at)",
            (owner, thread_id, graph, now, now),
        )

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        # execute_fetchall runs and drains the statement in one step, so no other
        # statement on the shared connection can interleave with a half-read cursor.
        rows = await self._conn.execute_fetchall(
            "SELECT thread_id, graph, created_at, updated_at FROM graphgate_threads"
            " WHERE owner = ? AND thread_id = ?",
            (owner, thread_id),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        _check_page(limit, offset)
        rows = await self._conn.execute_fetchall(
            "SELECT thread_id, graph, created_at, updated_at FROM graphgate_threads"
            " WHERE owner = ? ORDER BY updated_at DESC, thread_id LIMIT ? OFFSET ?",
            (owner, limit, offset),
        )
        return [_sqlite_record(row) for row in rows]

    async def delete(self, owner: str, thread_id: str) -> bool:
        async with self._conn.execute(
            "DELETE FROM graphgate_threads WHERE owner = ? AND thread_id = ?",
            (owner, thread_id),
        ) as cursor:
            return cursor.rowcount == 1


# COLLATE "C": order thread ids by code point, as SQLite and the memory store do, whatever
# the database's default collation; it also makes the key comparisons plain byte compares.
POSTGRES_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_threads (
        owner TEXT COLLATE "C" NOT NULL,
        thread_id TEXT COLLATE "C" NOT NULL,
        graph TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (owner, thread_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
)

def _postgres_record(row: dict[str, Any]) -> ThreadRecord:
    # TIMESTAMPTZ comes back in the session's time zone; normalise to UTC.
    return ThreadRecord(
        row["thread_id"],
        row["graph"],
        row["created_at"].astimezone(UTC),
        row["updated_at"].astimezone(UTC),
    )


class PostgresThreads:
    """The registry in Postgres, timed by the database clock so replicas agree.

    The table is created by `migrate_postgres`, with the other migrations.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def touch(self, owner: str, thread_id: str, graph: str) -> None:
        async with self._pool.connection() as conn:
            # now() is the transaction's start; GREATEST keeps updated_at from moving back
            # when two touches of one thread commit out of order.
            await conn.execute(
                "INSERT INTO graphgate_threads (owner, thread_id, graph, created_at, updated_at)"
                " VALUES (%s, %s, %s, now(), now())"
                " ON CONFLICT (owner, thread_id) DO UPDATE SET graph = EXCLUDED.graph,"
                " updated_at = GREATEST(graphgate_threads.updated_at, EXCLUDED.updated_at)",
                (owner, thread_id, graph),
            )

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT thread_id, graph, created_at, updated_at FROM graphgate_threads"
                " WHERE owner = %s AND thread_id = %s",
                (owner, thread_id),
            )
            row = await cursor.fetchone()
        return None if row is None else _postgres_record(row)

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        _check_page(limit, offset)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT thread_id, graph, created_at, updated_at FROM graphgate_threads"
                " WHERE owner = %s ORDER BY updated_at DESC, thread_id LIMIT %s OFFSET %s",
                (owner, limit, offset),
            )
            rows = await cursor.fetchall()
        return [_postgres_record(row) for row in rows]

    async def delete(self, owner: str, thread_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM graphgate_threads WHERE owner = %s AND thread_id = %s",
                (owner, thread_id),
            )
            return cursor.rowcount == 1
