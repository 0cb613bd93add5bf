"""Thread run leases: at most one run per thread at a time, across workers and replicas.

A lease is a row keyed by thread id with an expiry. A run takes it before starting,
renews it while running and deletes it when done. A crashed worker cannot release its
lease, so the row expires after `ttl` and the thread frees itself; that is why this is a
lease table and not a Postgres session advisory lock, which would also pin one pool
connection per open stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import aiosqlite
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


class ThreadLeases(Protocol):
    async def acquire(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        """Take the thread's lease; False if another live run holds it."""

    async def renew(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        """Extend our lease; False if we no longer hold it."""

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

    async def renew(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        held = self._leases.get(thread_id)
        if held is None or held[0] != run_id:
            return False
        self._leases[thread_id] = (run_id, self._clock() + ttl_s)
        return True

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

    async def renew(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        async with self._lock, self._conn.execute(
            "UPDATE graphgate_thread_leases SET expires_at = ? WHERE thread_id = ? AND run_id = ?",
            (self._clock() + ttl_s, thread_id, run_id),
        ) as cursor:
            return cursor.rowcount == 1

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

    async def renew(self, thread_id: str, run_id: str, ttl_s: float) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE graphgate_thread_leases SET expires_at = now() + make_interval(secs => %s)"
                " WHERE thread_id = %s AND run_id = %s",
                (ttl_s, thread_id, run_id),
            )
            return cursor.rowcount == 1

    async def release(self, thread_id: str, run_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM graphgate_thread_leases WHERE thread_id = %s AND run_id = %s",
                (thread_id, run_id),
            )
