"""The thread registry in the SQLite file."""

from __future__ import annotations

import builtins
import functools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from service.persistence.threads.json_filter import dump_metadata, json_contains
from service.persistence.threads.model import (
    ThreadRecord,
    check_graph,
    check_page,
    check_status,
)
from service.persistence.threads.query import COLUMNS, Dialect, order_by_clause, where_clause

# Timestamps are UTC epoch seconds (REAL, as in the lease table): they sort numerically,
# and a double still resolves well under a microsecond for present-day times. Metadata is
# the JSON text from dump_metadata, kept as written so values read back exactly.
#
# graph stays NOT NULL, with '' for "no run yet": tables from before the column could be
# empty were made NOT NULL, and SQLite can only drop that by rebuilding the table, which
# would have to be coordinated with every worker sharing the file. Graph names are never
# empty (checked in touch), so '' is unambiguous. One representation, old files and new.
SQLITE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_threads (
        owner TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        graph TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'idle',
        PRIMARY KEY (owner, thread_id)
    )
    """,
    # Serves list(): one owner's rows, already in the order they are returned.
    "CREATE INDEX IF NOT EXISTS graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
)

# Columns added since the first release, added to older files by setup().
SQLITE_ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("metadata", "ALTER TABLE graphgate_threads ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'"),
    ("status", "ALTER TABLE graphgate_threads ADD COLUMN status TEXT NOT NULL DEFAULT 'idle'"),
)


# One search calls the filter once per row, always with the same query text; the parsed
# query is shared, which is safe because json_contains only reads it.
_parsed_query = functools.lru_cache(maxsize=64)(json.loads)


def _sqlite_contains(metadata: str, query: str) -> bool:
    return json_contains(json.loads(metadata), _parsed_query(query))


def _sqlite_merge(metadata: str, patch: str) -> str:
    return dump_metadata({**json.loads(metadata), **json.loads(patch)})


# Metadata is filtered and merged by the Python functions the memory store uses, registered
# on the connection. In plain SQLite SQL neither is exact: json_patch drops null values and
# merges nested objects (jsonb || does neither); JSON paths in SQLite 3.40 cannot name a key
# containing '"' and their quoting changed in 3.45; and containment of nested arrays would
# take generated, recursive json_each queries. As functions they stay single statements,
# and LIMIT, OFFSET and count(*) stay in SQL.
_SQLITE = Dialect(
    owner="owner = ?",
    status="status = ?",
    metadata="graphgate_json_contains(metadata, ?)",
    ids="thread_id IN (SELECT value FROM json_each(?))",
    ids_param=lambda ids: json.dumps(list(ids)),
)


def _sqlite_record(row: Any) -> ThreadRecord:
    thread_id, graph, created_at, updated_at, metadata, status = row
    return ThreadRecord(
        thread_id,
        graph or None,
        datetime.fromtimestamp(created_at, UTC),
        datetime.fromtimestamp(updated_at, UTC),
        json.loads(metadata),
        status,
    )


class SqliteThreads:
    """The registry in the SQLite file, so several local workers share it.

    Runs on the autocommit connection the leases use, not the checkpointer's: that one
    runs its own transactions and must not have ours committed in the middle of them.
    Every operation is a single statement, so autocommit makes each one atomic.
    `setup()` must run first: it also registers the metadata functions on the connection.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    async def setup(self) -> None:
        await self._conn.create_function(
            "graphgate_json_contains", 2, _sqlite_contains, deterministic=True)
        await self._conn.create_function(
            "graphgate_json_merge", 2, _sqlite_merge, deterministic=True)
        # One transaction, holding the write lock from the start: workers sharing the file
        # start together, and without it two could both see a column missing and the second
        # ALTER would fail. Nothing else uses the connection before setup returns.
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SQLITE_SCHEMA:
                await self._conn.execute(statement)
            rows = await self._conn.execute_fetchall("PRAGMA table_info(graphgate_threads)")
            present = {row[1] for row in rows}
            for column, statement in SQLITE_ADDED_COLUMNS:
                if column not in present:
                    await self._conn.execute(statement)
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self._conn.execute("COMMIT")

    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        check_graph(graph)
        if status is not None:
            check_status(status)
        now = self._clock()
        # max(): a wall clock stepped back (NTP) or another worker's slightly slower
        # clock must not move a thread backwards in the listing.
        await self._conn.execute(
            "INSERT INTO graphgate_threads"
            " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
            " VALUES (?, ?, ?, ?, ?, '{}', coalesce(?, 'idle'))"
            " ON CONFLICT (owner, thread_id) DO UPDATE SET graph = excluded.graph,"
            " updated_at = max(graphgate_threads.updated_at, excluded.updated_at),"
            " status = coalesce(?, graphgate_threads.status)",
            (owner, thread_id, graph, now, now, status, status),
        )

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        text = dump_metadata(metadata)
        now = self._clock()
        # execute_fetchall runs and drains the statement in one step, so no other
        # statement on the shared connection can interleave with a half-read cursor.
        rows = await self._conn.execute_fetchall(
            "INSERT INTO graphgate_threads"
            " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
            " VALUES (?, ?, '', ?, ?, ?, 'idle')"
            " ON CONFLICT (owner, thread_id) DO NOTHING"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (owner, thread_id, now, now, text),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        rows = await self._conn.execute_fetchall(
            "SELECT thread_id, graph, created_at, updated_at, metadata, status"
            " FROM graphgate_threads WHERE owner = ? AND thread_id = ?",
            (owner, thread_id),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        patch = dump_metadata({} if metadata is None else metadata)
        rows = await self._conn.execute_fetchall(
            "UPDATE graphgate_threads SET metadata = graphgate_json_merge(metadata, ?),"
            " updated_at = max(updated_at, ?) WHERE owner = ? AND thread_id = ?"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (patch, self._clock(), owner, thread_id),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        check_status(status)
        await self._conn.execute(
            "UPDATE graphgate_threads SET status = ?, updated_at = max(updated_at, ?)"
            " WHERE owner = ? AND thread_id = ?",
            (status, self._clock(), owner, thread_id),
        )

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
        check_page(limit, offset)
        order_by = order_by_clause(sort_by, sort_order)
        where, params = where_clause(_SQLITE, owner, metadata, status, ids)
        rows = await self._conn.execute_fetchall(
            # Every piece is a constant of this module; all input is bound.
            f"SELECT {COLUMNS} FROM graphgate_threads"  # noqa: S608
            + where + order_by + " LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_sqlite_record(row) for row in rows]

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        where, params = where_clause(_SQLITE, owner, metadata, status, None)
        rows = await self._conn.execute_fetchall(
            "SELECT count(*) FROM graphgate_threads" + where, params  # noqa: S608 (constants)
        )
        return int(next(iter(rows))[0])

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        return await self.search(owner, limit=limit, offset=offset)

    async def delete(self, owner: str, thread_id: str) -> bool:
        async with self._conn.execute(
            "DELETE FROM graphgate_threads WHERE owner = ? AND thread_id = ?",
            (owner, thread_id),
        ) as cursor:
            return cursor.rowcount == 1
