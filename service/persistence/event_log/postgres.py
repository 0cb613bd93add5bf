"""The event log in Postgres."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from service.persistence.event_log.model import (
    LoggedEvent,
    StreamFinished,
    check_ages,
    check_batch,
    check_read,
    check_run_id,
)
from service.persistence.leases import Pool

# Run by `migrate_postgres`, one statement at a time, on every start: each is idempotent.
POSTGRES_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_run_streams (
        run_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL,
        finished_at TIMESTAMPTZ
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS graphgate_run_events (
        run_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        event TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
    "CREATE INDEX IF NOT EXISTS graphgate_run_streams_finished"
    " ON graphgate_run_streams (finished_at)",
)

# One statement, so one transaction: the stream row is created or, if open, locked (the
# no-op DO UPDATE takes the row lock; its WHERE is rechecked on the latest version), and
# the events go in only through it. A finish commits before this statement takes the lock
# (then nothing is logged) or waits for it (then every event is logged before the finish):
# a reader that sees the stream finished has seen its last event.
_APPEND = """
WITH stream AS (
    INSERT INTO graphgate_run_streams AS s (run_id, created_at) VALUES (%s, now())
    ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id
    WHERE s.finished_at IS NULL
    RETURNING run_id
), added AS (
    INSERT INTO graphgate_run_events (run_id, seq, event, data)
    SELECT stream.run_id, e.seq, e.event, e.data
    FROM stream, unnest(%s::bigint[], %s::text[], %s::bytea[]) AS e (seq, event, data)
    ON CONFLICT (run_id, seq) DO NOTHING
)
SELECT count(*) AS open FROM stream
"""

# Markers and events in one statement, so no marker outlives its events.
_PURGE = """
WITH doomed AS (
    DELETE FROM graphgate_run_streams
    WHERE finished_at <= now() - make_interval(secs => %s::float8)
       OR (finished_at IS NULL AND %s::float8 IS NOT NULL
           AND created_at <= now() - make_interval(secs => %s::float8))
    RETURNING run_id
), events AS (
    DELETE FROM graphgate_run_events AS e USING doomed WHERE e.run_id = doomed.run_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM doomed) + (SELECT count(*) FROM events) AS deleted
"""


class PostgresEventLog:
    """The log in Postgres, so a stream can be resumed on any replica; timed by the
    database clock, so replicas agree on retention.

    The tables are created by `migrate_postgres`, with the other migrations.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        check_batch(run_id, events)
        if not events:
            return
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_APPEND, (
                run_id,
                [event.seq for event in events],
                [event.event for event in events],
                [event.data for event in events],
            ))
            row = await cursor.fetchone()
        if row is None or not row["open"]:
            raise StreamFinished(run_id)

    async def read(
        self, run_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[LoggedEvent]:
        check_read(after, limit)
        if "\x00" in run_id:  # not storable in text, so never logged; psycopg would raise
            return []
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT seq, event, data FROM graphgate_run_events"
                " WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (run_id, after, limit),
            )
            rows = await cursor.fetchall()
        return [LoggedEvent(row["seq"], row["event"], bytes(row["data"])) for row in rows]

    async def last_seq(self, run_id: str) -> int:
        if "\x00" in run_id:
            return 0
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT coalesce(max(seq), 0) AS seq FROM graphgate_run_events"
                " WHERE run_id = %s",
                (run_id,),
            )
            row = await cursor.fetchone()
        return 0 if row is None else int(row["seq"])

    async def finish(self, run_id: str) -> None:
        check_run_id(run_id)
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO graphgate_run_streams AS s (run_id, created_at, finished_at)"
                " VALUES (%s, now(), now()) ON CONFLICT (run_id)"
                " DO UPDATE SET finished_at = coalesce(s.finished_at, EXCLUDED.finished_at)",
                (run_id,),
            )

    async def is_finished(self, run_id: str) -> bool:
        if "\x00" in run_id:
            return False
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM graphgate_run_streams"
                " WHERE run_id = %s AND finished_at IS NOT NULL",
                (run_id,),
            )
            return await cursor.fetchone() is not None

    async def purge(
        self, older_than_s: float, *, unfinished_older_than_s: float | None = None
    ) -> int:
        check_ages(older_than_s, unfinished_older_than_s)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _PURGE, (older_than_s, unfinished_older_than_s, unfinished_older_than_s)
            )
            row = await cursor.fetchone()
        return 0 if row is None else int(row["deleted"])
