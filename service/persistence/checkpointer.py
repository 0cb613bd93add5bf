"""Checkpointer factory: memory, SQLite (the embedded default) or Postgres.

Everything here is opened in the app lifespan and closed when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite
import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import PoolTimeout

from service.persistence.event_log import POSTGRES_SCHEMA as EVENTS_POSTGRES_SCHEMA
from service.persistence.event_log import (
    EventLog,
    MemoryEventLog,
    PostgresEventLog,
    SqliteEventLog,
)
from service.persistence.instrumented import StoreObserver, TimedSaver, pool_stats
from service.persistence.leases import POSTGRES_SCHEMA as LEASES_POSTGRES_SCHEMA
from service.persistence.leases import (
    MemoryLeases,
    Pool,
    PostgresLeases,
    SqliteLeases,
    ThreadLeases,
)
from service.persistence.pool_check import CheckedPool
from service.persistence.runs import POSTGRES_SCHEMA as RUNS_POSTGRES_SCHEMA
from service.persistence.runs import MemoryRuns, PostgresRuns, RunRegistry, SqliteRuns
from service.persistence.threads import POSTGRES_SCHEMA as THREADS_POSTGRES_SCHEMA
from service.persistence.threads import (
    MemoryThreads,
    PostgresThreads,
    SqliteThreads,
    ThreadRegistry,
    storage_key,
)
from service.settings import Settings

# Arbitrary constant; every graphgate process serialises its migrations on it.
MIGRATION_LOCK_KEY = 0x67726170  # "grap"
MIGRATION_POLL_S = 0.1

# Errors that mean "the database is unreachable or overloaded", not "a bug".
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    PoolTimeout,
    psycopg.OperationalError,
    aiosqlite.OperationalError,
)


class StorageUnavailable(Exception):
    """The checkpointer's backing store did not answer."""


@dataclass(frozen=True)
class Persistence:
    kind: str
    checkpointer: BaseCheckpointSaver[Any]
    leases: ThreadLeases
    # A real query against the store; raises on failure. Used by /readyz.
    ping: Callable[[], Awaitable[None]]
    # Which owner each thread belongs to; see service.persistence.threads.
    threads: ThreadRegistry
    # The agent-protocol runs and their logged events; see service.persistence.runs and
    # service.persistence.event_log.
    runs: RunRegistry
    events: EventLog
    # Postgres only: the pool's connections now (size, in_use, idle, waiting); see
    # service.persistence.instrumented.pool_stats. None for SQLite and memory.
    pool_stats: Callable[[], dict[str, int]] | None = None

    async def erase_thread(self, owner: str, thread_id: str) -> None:
        """Delete everything stored for this owner's thread: its checkpoints, its runs and
        its registry record. The caller makes sure no run is writing to it."""
        await self.checkpointer.adelete_thread(storage_key(owner, thread_id))
        await self.runs.delete_thread(owner, thread_id)
        await self.threads.delete(owner, thread_id)


async def _no_ping() -> None:
    return None


@contextlib.asynccontextmanager
async def open_persistence(
    settings: Settings, *, observer: StoreObserver | None = None
) -> AsyncIterator[Persistence]:
    """Open the configured store, run its migrations and yield it; close it on exit.

    With an `observer`, the checkpointer is a `TimedSaver` reporting every call's
    duration to it; without one it is the store's own saver.
    """
    kind = settings.database_kind
    async with contextlib.AsyncExitStack() as stack:
        if kind == "memory":
            persistence = Persistence(
                kind, InMemorySaver(), MemoryLeases(), _no_ping, MemoryThreads(),
                MemoryRuns(), MemoryEventLog(),
            )
        elif kind == "sqlite":
            persistence = await stack.enter_async_context(_open_sqlite(settings))
        else:
            persistence = await stack.enter_async_context(_open_postgres(settings))
        if observer is not None:
            persistence = dataclasses.replace(
                persistence, checkpointer=TimedSaver(
                    persistence.checkpointer, observer,
                    # The in-memory saver's writes never await: a cancellation cannot
                    # land inside one, so there is nothing to see through to the end.
                    finish_writes=kind != "memory"),
            )
        yield persistence


async def _sqlite_connect(path: str, *, autocommit: bool) -> aiosqlite.Connection:
    # The saver's connection keeps Python's implicit transactions: it commits explicitly,
    # so a step's writes land together or not at all. The lease connection autocommits.
    conn = await aiosqlite.connect(path, isolation_level=None if autocommit else "")
    # WAL lets several worker processes read while one writes; busy_timeout makes a writer
    # wait for the file lock instead of failing at once with "database is locked".
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA busy_timeout=5000")
    # FULL: a commit survives power loss too, not only a process crash. The embedded
    # default favours safety; Postgres is the choice for throughput.
    await conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextlib.asynccontextmanager
async def _open_sqlite(settings: Settings) -> AsyncIterator[Persistence]:
    path = settings.sqlite_path
    path.parent.mkdir(parents=True, exist_ok=True)
    saver_conn = await _sqlite_connect(str(path), autocommit=False)
    lease_conn = await _sqlite_connect(str(path), autocommit=True)
    try:
        saver = AsyncSqliteSaver(saver_conn)
        await saver.setup()
        leases = SqliteLeases(lease_conn)
        await leases.setup()
        # The registry shares the lease connection: both need autocommit, single-statement
        # writes kept apart from the saver's transactions, and one more connection would
        # only add another writer contending for the file lock.
        threads = SqliteThreads(lease_conn)
        await threads.setup()
        # The runs and the event log too, for the same reasons: each write is one statement.
        runs = SqliteRuns(lease_conn)
        await runs.setup()
        events = SqliteEventLog(lease_conn)
        await events.setup()

        async def ping() -> None:
            async with lease_conn.execute("SELECT count(*) FROM checkpoints WHERE 0") as cursor:
                await cursor.fetchone()

        yield Persistence("sqlite", saver, leases, ping, threads, runs, events)
    finally:
        await lease_conn.close()
        await saver_conn.close()


def postgres_conninfo(settings: Settings) -> str:
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    return url


def make_pool(settings: Settings) -> Pool:
    pg = settings.postgres
    return CheckedPool(
        postgres_conninfo(settings),
        connection_class=AsyncConnection[DictRow],
        min_size=pg.pool_min_size,
        max_size=pg.pool_max_size,
        timeout=pg.pool_timeout_s,
        max_lifetime=pg.max_lifetime_s,
        max_idle=pg.max_idle_s,
        open=False,
        # Without a check, calls after a database restart fail with AdminShutdown on the
        # connections opened before it; with it the pool drops dead connections and
        # reconnects. A connection handed back a moment ago is not checked (pool_check).
        check_connections=pg.check_connections,
        kwargs={
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            "connect_timeout": pg.connect_timeout_s,
            "application_name": "graphgate",
        },
        name="graphgate",
    )


async def migrate_postgres(pool: Pool) -> None:
    """Apply the checkpointer's and graphgate's migrations, one process at a time.

    Several workers or replicas may start together; a session advisory lock makes the
    others wait while the first migrates, after which their migrations are no-ops.

    Waiters poll with pg_try_advisory_lock rather than block in pg_advisory_lock: the
    checkpointer's migrations include CREATE INDEX CONCURRENTLY, which waits for every
    open transaction, and a blocked pg_advisory_lock call is one, so blocking waiters
    and the migrating process would deadlock.
    """
    async with pool.connection() as conn:
        while True:
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s) AS locked", (MIGRATION_LOCK_KEY,)
            )
            row = await cursor.fetchone()
            if row is not None and row["locked"]:
                break
            await asyncio.sleep(MIGRATION_POLL_S)
        try:
            await AsyncPostgresSaver(conn).setup()
            await conn.execute(LEASES_POSTGRES_SCHEMA)
            # One statement per execute: a prepared statement cannot hold several.
            for statement in (
                *THREADS_POSTGRES_SCHEMA, *RUNS_POSTGRES_SCHEMA, *EVENTS_POSTGRES_SCHEMA
            ):
                await conn.execute(statement)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


@contextlib.asynccontextmanager
async def _open_postgres(settings: Settings) -> AsyncIterator[Persistence]:
    pool = make_pool(settings)
    try:
        await pool.open(wait=True, timeout=settings.postgres.startup_timeout_s)
    except PoolTimeout:
        await pool.close()
        raise StorageUnavailable(
            "could not connect to the Postgres database within "
            f"{settings.postgres.startup_timeout_s:g} s"
        ) from None
    try:
        await migrate_postgres(pool)
        saver = AsyncPostgresSaver(pool)

        async def ping() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1 FROM checkpoint_migrations LIMIT 1")

        def stats() -> dict[str, int]:
            return pool_stats(pool)

        yield Persistence(
            "postgres", saver, PostgresLeases(pool), ping, PostgresThreads(pool),
            PostgresRuns(pool), PostgresEventLog(pool), stats,
        )
    finally:
        await pool.close()


async def check_ready(persistence: Persistence, timeout_s: float) -> str | None:
    """None when the store answered a real query in time, else a short reason."""
    try:
        await asyncio.wait_for(persistence.ping(), timeout_s)
    except TimeoutError:
        return "checkpointer did not answer in time"
    except Exception:
        return "checkpointer query failed"
    return None
