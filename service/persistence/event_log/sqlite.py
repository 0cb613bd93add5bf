"""The event log in the SQLite file."""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable, Sequence

import aiosqlite

from service.persistence.event_log.model import (
    LoggedEvent,
    StreamFinished,
    check_ages,
    check_batch,
    check_read,
    check_run_id,
)

# Rows per INSERT: 3 parameters each, well under the 999 that older SQLite builds allow.
CHUNK = 250
_FINISHED = "graphgate: run stream finished"

# Times are UTC epoch seconds (REAL), as in the other graphgate tables. A stream row is
# written by the first append (created_at) and by finish (finished_at).
#
# The trigger is what makes "no appends after finish" hold across workers: it runs inside
# the INSERT, so the check and the write are one statement under the file's write lock. It
# fires for rows that would conflict too, so an append after finish fails whole.
SQLITE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_run_streams (
        run_id TEXT NOT NULL PRIMARY KEY,
        created_at REAL NOT NULL,
        finished_at REAL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS graphgate_run_events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
    "CREATE INDEX IF NOT EXISTS graphgate_run_streams_finished"
    " ON graphgate_run_streams (finished_at)",
    f"""
    CREATE TRIGGER IF NOT EXISTS graphgate_run_events_closed
    BEFORE INSERT ON graphgate_run_events
    WHEN EXISTS (SELECT 1 FROM graphgate_run_streams
                 WHERE run_id = NEW.run_id AND finished_at IS NOT NULL)
    BEGIN SELECT RAISE(ABORT, '{_FINISHED}'); END
    """,  # noqa: S608 (a constant)
)


def _insert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * rows)
    # WHERE true: SQLite's parser needs it between INSERT ... SELECT and ON CONFLICT.
    return (
        "INSERT INTO graphgate_run_events (run_id, seq, event, data)"  # noqa: S608 (constants)
        f" SELECT ?, column1, column2, column3 FROM (VALUES {values}) WHERE true"
        " ON CONFLICT (run_id, seq) DO NOTHING"
    )


class SqliteEventLog:
    """The log in the SQLite file, so every local worker can replay any run's stream.

    On the shared autocommit connection (see `SqliteThreads`), every write is a single
    statement: no BEGIN/COMMIT that another coroutine's statement on the same connection
    could land inside, and no lock to share with the other users of the connection. A batch
    goes in one multi-row INSERT, so it is atomic and costs one commit, not one per row;
    batches over CHUNK rows take several, in seq order, each idempotent, so a reader sees
    an ascending prefix and a retry completes the rest.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    async def setup(self) -> None:
        # Each statement is idempotent and takes the write lock itself, so workers starting
        # together on one file need no transaction.
        for statement in SQLITE_SCHEMA:
            await self._conn.execute(statement)

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        check_batch(run_id, events)
        if not events:
            return
        await self._conn.execute(
            "INSERT INTO graphgate_run_streams (run_id, created_at) VALUES (?, ?)"
            " ON CONFLICT (run_id) DO NOTHING",
            (run_id, self._clock()),
        )
        for start in range(0, len(events), CHUNK):
            chunk = events[start : start + CHUNK]
            params: list[object] = [run_id]
            for event in chunk:
                params += (event.seq, event.event, event.data)
            try:
                await self._conn.execute(_insert(len(chunk)), params)
            except sqlite3.IntegrityError as exc:
                if str(exc) == _FINISHED:
                    raise StreamFinished(run_id) from None
                raise

    async def read(
        self, run_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[LoggedEvent]:
        check_read(after, limit)
        rows = await self._conn.execute_fetchall(
            "SELECT seq, event, data FROM graphgate_run_events"
            " WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, after, limit),
        )
        return [LoggedEvent(seq, event, bytes(data)) for seq, event, data in rows]

    async def last_seq(self, run_id: str) -> int:
        rows = await self._conn.execute_fetchall(
            "SELECT coalesce(max(seq), 0) FROM graphgate_run_events WHERE run_id = ?",
            (run_id,),
        )
        return int(next(iter(rows))[0])

    async def finish(self, run_id: str) -> None:
        check_run_id(run_id)
        now = self._clock()
        await self._conn.execute(
            "INSERT INTO graphgate_run_streams (run_id, created_at, finished_at) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET finished_at = coalesce(finished_at, ?)",
            (run_id, now, now, now),
        )

    async def is_finished(self, run_id: str) -> bool:
        rows = await self._conn.execute_fetchall(
            "SELECT 1 FROM graphgate_run_streams WHERE run_id = ? AND finished_at IS NOT NULL",
            (run_id,),
        )
        return bool(rows)

    async def purge(
        self, older_than_s: float, *, unfinished_older_than_s: float | None = None
    ) -> int:
        check_ages(older_than_s, unfinished_older_than_s)
        now = self._clock()
        # -1 (never true) leaves unfinished streams alone.
        unfinished = -1.0 if unfinished_older_than_s is None else now - unfinished_older_than_s
        doomed = (
            "SELECT run_id FROM graphgate_run_streams WHERE finished_at <= ?"
            " OR (finished_at IS NULL AND created_at <= ?)"
        )
        cutoffs = (now - older_than_s, unfinished)
        # Two statements, events first: a marker outlives its events, never the reverse, so
        # an interruption between them leaves only markers for the next purge. A stream
        # still receiving events (one never finished) keeps its marker until they are gone.
        async with self._conn.execute(
            f"DELETE FROM graphgate_run_events WHERE run_id IN ({doomed})",  # noqa: S608
            cutoffs,
        ) as cursor:
            events = cursor.rowcount
        async with self._conn.execute(
            f"DELETE FROM graphgate_run_streams WHERE run_id IN ({doomed})"  # noqa: S608
            " AND NOT EXISTS (SELECT 1 FROM graphgate_run_events AS e"
            " WHERE e.run_id = graphgate_run_streams.run_id)",
            cutoffs,
        ) as cursor:
            return events + cursor.rowcount
