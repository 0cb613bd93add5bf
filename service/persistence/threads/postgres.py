"""The thread registry in Postgres."""

from __future__ import annotations

import builtins
from datetime import UTC
from typing import Any

from service.persistence.leases import Pool
from service.persistence.threads.json_filter import dump_metadata
from service.persistence.threads.model import (
    ThreadRecord,
    check_graph,
    check_page,
    check_status,
)
from service.persistence.threads.query import COLUMNS, Dialect, order_by_clause, where_clause

# COLLATE "C": order thread ids (and statuses) by code point, as SQLite and the memory
# store do, whatever the database's default collation; it also makes the key comparisons
# plain byte compares.
#
# Run by `migrate_postgres`, one statement at a time, on every start: each is idempotent.
# The CREATE TABLE is today's shape; the ALTERs bring tables from before metadata, status
# and thread creation without a run up to it (and are no-ops on a table just created).
POSTGRES_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_threads (
        owner TEXT COLLATE "C" NOT NULL,
        thread_id TEXT COLLATE "C" NOT NULL,
        graph TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
        status TEXT COLLATE "C" NOT NULL DEFAULT 'idle',
        PRIMARY KEY (owner, thread_id)
    )
    """,
    "ALTER TABLE graphgate_threads"
    " ADD COLUMN IF NOT EXISTS metadata JSONB NOT NULL DEFAULT '{}'::jsonb",
    "ALTER TABLE graphgate_threads"
    " ADD COLUMN IF NOT EXISTS status TEXT COLLATE \"C\" NOT NULL DEFAULT 'idle'",
    "ALTER TABLE graphgate_threads ALTER COLUMN graph DROP NOT NULL",
    "CREATE INDEX IF NOT EXISTS graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
    # Serves search() by metadata: jsonb_path_ops indexes exactly the @> operator.
    "CREATE INDEX IF NOT EXISTS graphgate_threads_metadata"
    " ON graphgate_threads USING gin (metadata jsonb_path_ops)",
)

_POSTGRES = Dialect(
    owner="owner = %s",
    status="status = %s",
    metadata="metadata @> %s::jsonb",
    ids="thread_id = ANY(%s::text[])",
    ids_param=builtins.list,
)


def _postgres_record(row: dict[str, Any]) -> ThreadRecord:
    # TIMESTAMPTZ comes back in the session's time zone; normalise to UTC.
    return ThreadRecord(
        row["thread_id"],
        row["graph"],
        row["created_at"].astimezone(UTC),
        row["updated_at"].astimezone(UTC),
        row["metadata"],
        row["status"],
    )


class PostgresThreads:
    """The registry in Postgres, timed by the database clock so replicas agree.

    The table is created by `migrate_postgres`, with the other migrations. Metadata goes
    in as the JSON text from dump_metadata, cast to jsonb by the statement.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, params: Any) -> builtins.list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        check_graph(graph)
        if status is not None:
            check_status(status)
        async with self._pool.connection() as conn:
            # now() is the transaction's start; GREATEST keeps updated_at from moving back
            # when two touches of one thread commit out of order.
            await conn.execute(
                "INSERT INTO graphgate_threads"
                " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
                " VALUES (%s, %s, %s, now(), now(), '{}'::jsonb, coalesce(%s::text, 'idle'))"
                " ON CONFLICT (owner, thread_id) DO UPDATE SET graph = EXCLUDED.graph,"
                " updated_at = GREATEST(graphgate_threads.updated_at, EXCLUDED.updated_at),"
                " status = coalesce(%s::text, graphgate_threads.status)",
                (owner, thread_id, graph, status, status),
            )

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        rows = await self._fetch(
            "INSERT INTO graphgate_threads"
            " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
            " VALUES (%s, %s, NULL, now(), now(), %s::jsonb, 'idle')"
            " ON CONFLICT (owner, thread_id) DO NOTHING"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (owner, thread_id, dump_metadata(metadata)),
        )
        return next((_postgres_record(row) for row in rows), None)

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        rows = await self._fetch(
            "SELECT thread_id, graph, created_at, updated_at, metadata, status"
            " FROM graphgate_threads WHERE owner = %s AND thread_id = %s",
            (owner, thread_id),
        )
        return next((_postgres_record(row) for row in rows), None)

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        # jsonb ||: a shallow merge in which the right side's keys win, nulls included.
        rows = await self._fetch(
            "UPDATE graphgate_threads SET metadata = metadata || %s::jsonb,"
            " updated_at = GREATEST(updated_at, now()) WHERE owner = %s AND thread_id = %s"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (dump_metadata({} if metadata is None else metadata), owner, thread_id),
        )
        return next((_postgres_record(row) for row in rows), None)

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        check_status(status)
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE graphgate_threads SET status = %s, updated_at = GREATEST(updated_at, now())"
                " WHERE owner = %s AND thread_id = %s",
                (status, owner, thread_id),
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
        where, params = where_clause(_POSTGRES, owner, metadata, status, ids)
        rows = await self._fetch(
            # Every piece is a constant of this module; all input is bound.
            f"SELECT {COLUMNS} FROM graphgate_threads"  # noqa: S608
            + where + order_by + " LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [_postgres_record(row) for row in rows]

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        where, params = where_clause(_POSTGRES, owner, metadata, status, None)
        rows = await self._fetch(
            "SELECT count(*) AS n FROM graphgate_threads" + where, params  # noqa: S608
        )
        return int(rows[0]["n"])

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        return await self.search(owner, limit=limit, offset=offset)

    async def delete(self, owner: str, thread_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM graphgate_threads WHERE owner = %s AND thread_id = %s",
                (owner, thread_id),
            )
            return cursor.rowcount == 1
