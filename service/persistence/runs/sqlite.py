"""The run registry in the SQLite file."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from service.persistence.runs.model import (
    RunExists,
    RunRecord,
    check_action,
    check_record,
    check_status,
)
from service.persistence.threads.model import check_page

# Timestamps are UTC epoch seconds (REAL), metadata and kwargs the stores' JSON text, as in
# the thread registry. Text compares as BINARY, which for UTF-8 is code point order, as in
# the memory store and Postgres' COLLATE "C".
SQLITE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_runs (
        owner TEXT NOT NULL,
        run_id TEXT NOT NULL PRIMARY KEY,
        thread_id TEXT NOT NULL,
        assistant_id TEXT NOT NULL,
        graph TEXT NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        kwargs TEXT NOT NULL DEFAULT '{}',
        multitask_strategy TEXT NOT NULL,
        cancel_action TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    # Serves list(): one owner's thread's runs, already in the order they are returned.
    "CREATE INDEX IF NOT EXISTS graphgate_runs_owner_thread_created"
    " ON graphgate_runs (owner, thread_id, created_at DESC, run_id)",
)

# What every read selects, in RunRecord's order.
COLUMNS = (
    "run_id, thread_id, assistant_id, graph, status, metadata, kwargs, multitask_strategy,"
    " created_at, updated_at"
)


def _record(row: Any) -> RunRecord:
    (run_id, thread_id, assistant_id, graph, status, metadata, kwargs, strategy,
     created_at, updated_at) = row
    return RunRecord(
        run_id, thread_id, assistant_id, graph, status, json.loads(metadata),
        json.loads(kwargs), strategy,
        datetime.fromtimestamp(created_at, UTC), datetime.fromtimestamp(updated_at, UTC),
    )


class SqliteRuns:
    """The registry in the SQLite file, so several local workers share it.

    On the autocommit connection the leases and the thread registry use, for the same
    reasons (see `SqliteThreads`): every operation is a single statement, so autocommit
    makes each one atomic, and reads go through execute_fetchall, so no other coroutine's
    statement can interleave with a half-read cursor. `setup()` must run first.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    async def setup(self) -> None:
        # CREATE ... IF NOT EXISTS is idempotent and each takes the write lock, so workers
        # starting together on one file need no transaction here.
        for statement in SQLITE_SCHEMA:
            await self._conn.execute(statement)

    async def _fetch(self, query: str, params: tuple[Any, ...]) -> builtins.list[RunRecord]:
        rows = await self._conn.execute_fetchall(query, params)
        return [_record(row) for row in rows]

    async def create(self, owner: str, record: RunRecord) -> None:
        metadata, kwargs = check_record(owner, record)
        now = self._clock()
        rows = await self._conn.execute_fetchall(
            "INSERT INTO graphgate_runs (owner, run_id, thread_id, assistant_id, graph, status,"
            " metadata, kwargs, multitask_strategy, cancel_action, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)"
            " ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
            (owner, record.run_id, record.thread_id, record.assistant_id, record.graph,
             record.status, metadata, kwargs, record.multitask_strategy, now, now),
        )
        if not rows:
            raise RunExists(record.run_id)

    async def get(self, owner: str, thread_id: str, run_id: str) -> RunRecord | None:
        found = await self._fetch(
            f"SELECT {COLUMNS} FROM graphgate_runs"  # noqa: S608 (a constant)
            " WHERE run_id = ? AND owner = ? AND thread_id = ?",
            (run_id, owner, thread_id),
        )
        return next(iter(found), None)

    async def get_any(self, owner: str, run_id: str) -> RunRecord | None:
        found = await self._fetch(
            f"SELECT {COLUMNS} FROM graphgate_runs"  # noqa: S608 (a constant)
            " WHERE run_id = ? AND owner = ?",
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
        return await self._fetch(
            f"SELECT {COLUMNS} FROM graphgate_runs"  # noqa: S608 (a constant)
            " WHERE owner = ? AND thread_id = ? AND (? IS NULL OR status = ?)"
            " ORDER BY created_at DESC, run_id ASC LIMIT ? OFFSET ?",
            (owner, thread_id, status, status, limit, offset),
        )

    async def set_status(self, run_id: str, status: str) -> None:
        check_status(status)
        # max(): a wall clock stepped back (NTP) or another worker's slightly slower clock
        # must not move a run backwards.
        await self._conn.execute(
            "UPDATE graphgate_runs SET status = ?, updated_at = max(updated_at, ?)"
            " WHERE run_id = ?",
            (status, self._clock(), run_id),
        )

    async def request_cancel(
        self, owner: str, thread_id: str, run_id: str, action: str
    ) -> RunRecord | None:
        check_action(action)
        found = await self._fetch(
            "UPDATE graphgate_runs SET cancel_action = ?,"  # noqa: S608 (constants)
            " updated_at = max(updated_at, ?)"
            " WHERE run_id = ? AND owner = ? AND thread_id = ?"
            f" RETURNING {COLUMNS}",
            (action, self._clock(), run_id, owner, thread_id),
        )
        return next(iter(found), None)

    async def cancel_requested(self, run_id: str) -> str | None:
        rows = await self._conn.execute_fetchall(
            "SELECT cancel_action FROM graphgate_runs WHERE run_id = ?", (run_id,)
        )
        return next((row[0] for row in rows), None)

    async def delete(self, owner: str, thread_id: str, run_id: str) -> bool:
        async with self._conn.execute(
            "DELETE FROM graphgate_runs WHERE run_id = ? AND owner = ? AND thread_id = ?",
            (run_id, owner, thread_id),
        ) as cursor:
            return cursor.rowcount == 1

    async def delete_thread(self, owner: str, thread_id: str) -> int:
        async with self._conn.execute(
            "DELETE FROM graphgate_runs WHERE owner = ? AND thread_id = ?", (owner, thread_id)
        ) as cursor:
            return cursor.rowcount
