"""Thread run leases: at most one run per thread at a time, across workers and replicas.

A lease is a row keyed by thread id with an expiry. A run takes it before starting, its
worker renews it while the run goes on (all of the worker's leases in one statement) and
the run deletes it when done. A crashed worker cannot release its
lease, so the row expires after `ttl` and the thread frees itself; that is why this is a
lease table and not a Postgres session advisory lock, which would also pin one pool
connection per open stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import aiosqlite
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

# (thread id, run id): who holds which thread. A worker renews all of its leases together,
# from one task, so renewing costs one statement per period rather than one per run.
Lease = tuple[str, str]

# SQLite binds at most 32,766 variables (999 before 3.32); two per lease, and a margin.
SQLITE_CHUNK = 400


class ThreadLeases(Protocol):
    async def acquire(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        """Take the thread's lease; False if another live run holds it."""

    async def renew_many(self, held: Sequence[Lease], ttl_s: float) -> set[Lease]:
        """Extend these leases in one go; returns the ones we still hold."""

    async def release(self, thread_id: str, run_id: str) -> None:
        """Give the lease back (only if we still hold it)."""


class MemoryLeases:
    """For `memory:` storage, which is per-process anyway."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, tuple[str, float]] = {}

    async def acquire(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        now = self._clock()
        held = self._leases.get(thread_id)
        if held is not None and held[1] > now:
            return False
        self._leases[thread_id] = (run_id, now + ttl_s)
        return True

    async def renew_many(self, held: Sequence[Lease], ttl_s: float) -> set[Lease]:
        expires = self._clock() + ttl_s
        renewed: set[Lease] = set()
        for thread_id, run_id in held:
            current = self._leases.get(thread_id)
            if current is not None and current[0] == run_id:
                self._leases[thread_id] = (run_id, expires)
                renewed.add((thread_id, run_id))
        return renewed

    async def release(self, thread_id: str, run_id: str) -> None:
        held = self._leases.get(thread_id)
        if held is not None and held[0] == run_id:
            del self._leases[thread_id]


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS graphgate_thread_leases (
    thread_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    expires_at REAL NOT NULL
)
"""


class SqliteLeases:
    """Leases in the SQLite file, so several local workers share them.

    Uses its own autocommit connection: the checkpointer's connection runs its own
    transactions and must not have ours committed in the middle of them.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock
        # aiosqlite serialises statements, but a renew must not interleave with an acquire
        # on the same connection mid-statement; one lock keeps it obvious.
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        await self._conn.execute(SQLITE_SCHEMA)

    async def acquire(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        now = self._clock()
        async with self._lock, self._conn.execute(
            "INSERT INTO graphgate_thread_leases (thread_id, run_id, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (thread_id) DO UPDATE SET run_id = excluded.run_id,"
            " expires_at = excluded.expires_at"
            " WHERE graphgate_thread_leases.expires_at < ? RETURNING run_id",
            (thread_id, run_id, now + ttl_s, now),
        ) as cursor:
            return await cursor.fetchone() is not None

    async def renew_many(self, held: Sequence[Lease], ttl_s: float) -> set[Lease]:
        expires = self._clock() + ttl_s
        renewed: set[Lease] = set()
        async with self._lock:
            for start in range(0, len(held), SQLITE_CHUNK):
                chunk = held[start:start + SQLITE_CHUNK]
                pairs = ", ".join("(?, ?)" for _ in chunk)
                params = [expires, *(value for lease in chunk for value in lease)]
                # Only "(?, ?)" placeholders are joined in; the values are bound.
                query = ("UPDATE graphgate_thread_leases SET expires_at = ?"  # noqa: S608
                         f" WHERE (thread_id, run_id) IN (VALUES {pairs})"
                         " RETURNING thread_id, run_id")
                async with self._conn.execute(query, params) as cursor:
                    renewed.update((row[0], row[1]) for row in await cursor.fetchall())
        return renewed

    async def release(self, thread_id: str, run_id: str) -> None:
        async with self._lock:
            await self._conn.execute(
                "DELETE FROM graphgate_thread_leases WHERE thread_id = ? AND run_id = ?",
                (thread_id, run_id),
            )


POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS graphgate_thread_leases (
    thread_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
)
"""


class PostgresLeases:
    """Leases in Postgres, timed by the database clock so replicas agree on expiry."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def acquire(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO graphgate_thread_leases (thread_id, run_id, expires_at)"
                " VALUES (%s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (thread_id) DO UPDATE SET run_id = EXCLUDED.run_id,"
                " expires_at = EXCLUDED.expires_at"
                " WHERE graphgate_thread_leases.expires_at < now() RETURNING run_id",
                (thread_id, run_id, ttl_s),
            )
            row = await cursor.fetchone()
            return row is not None

    async def renew_many(self, held: Sequence[Lease], ttl_s: float) -> set[Lease]:
        if not held:
            return set()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE graphgate_thread_leases AS l"
                " SET expires_at = now() + make_interval(secs => %s)"
                " FROM unnest(%s::text[], %s::text[]) AS h(thread_id, run_id)"
                " WHERE l.thread_id = h.thread_id AND l.run_id = h.run_id"
                " RETURNING l.thread_id, l.run_id",
                (ttl_s, [t for t, _ in held], [r for _, r in held]),
            )
            return {(row["thread_id"], row["run_id"]) for row in await cursor.fetchall()}

    async def release(self, thread_id: str, run_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM graphgate_thread_leases WHERE thread_id = %s AND run_id = %s",
                (thread_id, run_id),
            )
