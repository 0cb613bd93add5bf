"""The run registry in Postgres."""

from __future__ import annotations

import builtins
from datetime import UTC
from typing import Any

from service.persistence.leases import Pool
from service.persistence.runs.model import (
    RunExists,
    RunRecord,
    check_action,
    check_record,
    check_status,
)
from service.persistence.threads.model import check_page

# Run by `migrate_postgres`, one statement at a time, on every start: each is idempotent.
# COLLATE "C" orders run ids by code point, as SQLite and the memory store do. metadata is
# jsonb (the same rules as thread metadata, so it can be searched the same way); kwargs is
# json, kept as the ASCII text written, which holds escaped NULs that jsonb refuses.
POSTGRES_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_runs (
        owner TEXT COLLATE "C" NOT NULL,
        run_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        thread_id TEXT COLLATE "C" NOT NULL,
        assistant_id TEXT NOT NULL,
        graph TEXT NOT NULL,
        status TEXT COLLATE "C" NOT NULL,
        metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
        kwargs JSON NOT NULL DEFAULT '{}'::json,
        multitask_strategy TEXT NOT NULL,
        cancel_action TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS graphgate_runs_owner_thread_created"
    " ON graphgate_runs (owner, thread_id, created_at DESC, run_id)",
)

COLUMNS = (
    "run_id, thread_id, assistant_id, graph, status, metadata, kwargs, multitask_strategy,"
    " created_at, updated_at"
)


def _record(row: dict[str, Any]) -> RunRecord:
    # TIMESTAMPTZ comes back in the session's time zone; normalise to UTC.
    return RunRecord(
        row["run_id"], row["thread_id"], row["assistant_id"], row["graph"], row["status"],
        row["metadata"], row["kwargs"], row["multitask_strategy"],
        row["created_at"].astimezone(UTC), row["updated_at"].astimezone(UTC),
    )


def _storable(*values: str) -> bool:
    # Postgres text cannot hold NUL, and psycopg raises on such a parameter; no stored run
    # has one (create refuses it everywhere), so a lookup with one finds nothing, as in
    # the other stores.
    return not any("\x00" in value for value in values)


class PostgresRuns:
    """The registry in Postgres, timed by the database clock so replicas agree.

    The table is created by `migrate_postgres`, with the other migrations.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, params: tuple[Any, ...]) -> builtins.list[RunRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return [_record(row) for row in await cursor.fetchall()]

    async def _rowcount(self, query: str, params: tuple[Any, ...]) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return cursor.rowcount

    async def create(self, owner: str, record: RunRecord) -> None:
        metadata, kwargs = check_record(owner, record)
        added = await self._rowcount(
            "INSERT INTO graphgate_runs (owner, run_id, thread_id, assistant_id, graph, status,"
            " metadata, kwargs, multitask_strategy, cancel_action, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s::json, %s, NULL, now(), now())"
            " ON CONFLICT (run_id) DO NOTHING",
            (owner, record.run_id, record.thread_id, record.assistant_id, record.graph,
             record.status, metadata, kwargs, record.multitask_strategy),
        )
        if added != 1:
            raise RunExists(record.run_id)

    async def get(self, owner: str, thread_id: str, run_id: str) -> RunRecord | None:
        if not _storable(owner, thread_id, run_id):
            return None
        found = await self._fetch(
            f"SELECT {COLUMNS} FROM graphgate_runs"  # noqa: S608 (a constant)
            " WHERE run_id = %s AND owner = %s AND thread_id = %s",
            (run_id, owner, thread_id),
        )
        return next(iter(found), None)

    async def get_any(self, owner: str, run_id: str) -> RunRecord | None:
        if not _storable(owner, run_id):
            return None
        found = await self._fetch(
            f"SELECT {COLUMNS} FROM graphgate_runs"  # noqa: S608 (a constant)
            " WHERE run_id = %s AND owner = %s",
            (run_id, owner),
        )
        return next(iter(found), None)

    async def list(
        self, owner: str, thread_id: str, *, limit: int, offset: int = 0,
        status: str | None = None,
    ) -> builtins.list[RunRecord]:
        check_page(limit, offset)
        if status is not None:
            check_status(status)
        if not _storable(owner, thread_id):
            return []
        return await self._fetch(
            f"SELECT {COLUMNS} FROM graphgate_runs"  # noqa: S608 (a constant)
            " WHERE owner = %s AND thread_id = %s AND (%s::text IS NULL OR status = %s)"
            " ORDER BY created_at DESC, run_id ASC LIMIT %s OFFSET %s",
            (owner, thread_id, status, status, limit, offset),
        )

    async def set_status(self, run_id: str, status: str) -> None:
        check_status(status)
        if _storable(run_id):
            # now() is the transaction's start; GREATEST keeps updated_at from moving back
            # when two updates of one run commit out of order.
            await self._rowcount(
                "UPDATE graphgate_runs SET status = %s,"
                " updated_at = GREATEST(updated_at, now()) WHERE run_id = %s",
                (status, run_id),
            )

    async def request_cancel(
        self, owner: str, thread_id: str, run_id: str, action: str
    ) -> RunRecord | None:
        check_action(action)
        if not _storable(owner, thread_id, run_id):
            return None
        found = await self._fetch(
            "UPDATE graphgate_runs SET cancel_action = %s,"  # noqa: S608 (constants)
            " updated_at = GREATEST(updated_at, now())"
            " WHERE run_id = %s AND owner = %s AND thread_id = %s"
            f" RETURNING {COLUMNS}",
            (action, run_id, owner, thread_id),
        )
        return next(iter(found), None)

    async def cancel_requested(self, run_id: str) -> str | None:
        if not _storable(run_id):
            return None
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT cancel_action FROM graphgate_runs WHERE run_id = %s", (run_id,)
            )
            row = await cursor.fetchone()
        return None if row is None else row["cancel_action"]

    async def delete(self, owner: str, thread_id: str, run_id: str) -> bool:
        if not _storable(owner, thread_id, run_id):
            return False
        deleted = await self._rowcount(
            "DELETE FROM graphgate_runs WHERE run_id = %s AND owner = %s AND thread_id = %s",
            (run_id, owner, thread_id),
        )
        return deleted == 1

    async def delete_thread(self, owner: str, thread_id: str) -> int:
        if not _storable(owner, thread_id):
            return 0
        return await self._rowcount(
            "DELETE FROM graphgate_runs WHERE owner = %s AND thread_id = %s", (owner, thread_id)
        )
