"""The run event log, identical on every store: append, replay, finish, purge.

Scenarios run on the in-memory store and, through `database_url`, on SQLite and on a real
Postgres.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import psycopg
import pytest

from service.persistence import (
    EventLog,
    LoggedEvent,
    MemoryEventLog,
    PostgresEventLog,
    SqliteEventLog,
    SqliteRuns,
    StreamFinished,
    open_persistence,
)
from service.persistence.checkpointer import make_pool, migrate_postgres
from tests.conftest import make_settings
from tests.persistence.test_threads import execute_raw, run
from tests.support.postgres import PostgresServer

Scenario = Callable[[EventLog], Awaitable[None]]

# Every byte value, NUL, and what is not UTF-8: the log must treat data as opaque bytes.
ODD_BYTES = [bytes(range(256)), b"\x00", b"\xff\xfe\xc3(", b"", b'{"a":"\\u0000"}\n']


def events(first: int, last: int, tag: str = "") -> list[LoggedEvent]:
    return [LoggedEvent(seq, "values", f'{{"n":{seq}{tag}}}'.encode()) for seq in
            range(first, last + 1)]


def seqs(logged: list[LoggedEvent]) -> list[int]:
    return [event.seq for event in logged]


@asynccontextmanager
async def log_for(database_url: str) -> AsyncIterator[EventLog]:
    async with open_persistence(make_settings(database_url)) as persistence:
        yield persistence.events


# --- Scenarios every store must pass ------------------------------------------------


async def append_then_read(log: EventLog) -> None:
    assert await log.read("r1", after=0) == []
    assert await log.last_seq("r1") == 0
    await log.append("r1", events(1, 3))
    await log.append("r1", events(4, 5))
    await log.append("r2", events(1, 1, tag="r2"))
    assert await log.read("r1", after=0) == events(1, 5)
    assert seqs(await log.read("r1", after=1)) == [2, 3, 4, 5]
    assert seqs(await log.read("r1", after=2, limit=2)) == [3, 4]
    assert await log.read("r1", after=0, limit=0) == []
    assert await log.read("r1", after=5) == []
    assert await log.read("r1", after=99) == []
    assert await log.read("r2", after=0) == events(1, 1, tag="r2")
    assert await log.last_seq("r1") == 5
    assert await log.last_seq("r2") == 1
    assert await log.last_seq("r3") == 0
    await log.append("r1", [])  # nothing to do
    assert await log.last_seq("r1") == 5
    with pytest.raises(ValueError, match="negative"):
        await log.read("r1", after=0, limit=-1)
    with pytest.raises(TypeError):
        await log.read("r1", after=None, limit=1)  # type: ignore[arg-type]


async def append_is_idempotent(log: EventLog) -> None:
    await log.append("r", events(1, 3))
    await log.append("r", events(1, 3))  # a retried batch
    assert await log.read("r", after=0) == events(1, 3)
    # Overlapping: what is logged stays (the first write wins), the rest is added.
    await log.append("r", events(2, 5, tag=',"retry":1'))
    assert await log.read("r", after=0) == events(1, 3) + events(4, 5, tag=',"retry":1')
    # A gap filled later still reads back in seq order.
    await log.append("r", events(8, 9))
    await log.append("r", events(6, 7))
    assert seqs(await log.read("r", after=0)) == list(range(1, 10))
    assert seqs(await log.read("r", after=5, limit=3)) == [6, 7, 8]
    assert await log.last_seq("r") == 9


async def data_is_binary_safe(log: EventLog) -> None:
    batch = [LoggedEvent(n + 1, name, data) for n, (name, data) in enumerate(zip(
        ["values", "messages/partial", "ünï 🙂", "a:b", "", "error"], ODD_BYTES, strict=False))]
    await log.append("bin", batch)
    back = await log.read("bin", after=0)
    assert back == batch
    assert all(type(event.data) is bytes for event in back)


async def a_large_batch_is_logged_in_order(log: EventLog) -> None:
    await log.append("big", events(1, 1234))
    assert await log.read("big", after=0, limit=2000) == events(1, 1234)
    assert seqs(await log.read("big", after=1000, limit=3)) == [1001, 1002, 1003]
    assert await log.last_seq("big") == 1234


async def malformed_batches_log_nothing(log: EventLog) -> None:
    ok = LoggedEvent(1, "values", b"{}")
    bad: list[tuple[type[Exception], str | None, list[LoggedEvent]]] = [
        (ValueError, "increasing", [ok, LoggedEvent(1, "values", b"{}")]),
        (ValueError, "increasing", [LoggedEvent(2, "v", b""), LoggedEvent(1, "v", b"")]),
        (ValueError, "positive", [LoggedEvent(0, "values", b"{}")]),
        (ValueError, "positive", [LoggedEvent(-3, "values", b"{}")]),
        (ValueError, "positive", [ok, LoggedEvent(2**63, "values", b"{}")]),
        (TypeError, "int", [ok, LoggedEvent(True, "values", b"{}")]),
        (TypeError, "int", [ok, LoggedEvent(2.0, "values", b"{}")]),  # type: ignore[arg-type]
        (TypeError, "bytes", [ok, LoggedEvent(2, "values", "{}")]),  # type: ignore[arg-type]
        (TypeError, "bytes", [ok, LoggedEvent(2, "v", bytearray(b"x"))]),  # type: ignore[arg-type]
        (ValueError, "NUL", [ok, LoggedEvent(2, "val\x00ues", b"{}")]),
        (ValueError, None, [ok, LoggedEvent(2, "\ud800", b"{}")]),
        (TypeError, "string", [ok, LoggedEvent(2, None, b"{}")]),  # type: ignore[arg-type]
        (TypeError, "LoggedEvent", [ok, (2, "values", b"{}")]),  # type: ignore[list-item]
    ]
    for error, match, batch in bad:
        with pytest.raises(error, match=match):
            await log.append("r", batch)
    assert await log.last_seq("r") == 0
    for run_id in ("", "r\x00"):
        with pytest.raises(ValueError, match="run_id"):
            await log.append(run_id, [ok])
        with pytest.raises(ValueError, match="run_id"):
            await log.finish(run_id)
        assert await log.read(run_id, after=0) == []
        assert await log.last_seq(run_id) == 0
        assert await log.is_finished(run_id) is False
    await log.append("r", [ok, LoggedEvent(2**63 - 1, "values", b"{}")])  # the largest seq
    assert await log.last_seq("r") == 2**63 - 1


async def finish_closes_the_stream(log: EventLog) -> None:
    assert await log.is_finished("r") is False
    await log.append("r", events(1, 2))
    assert await log.is_finished("r") is False
    await log.finish("r")
    assert await log.is_finished("r") is True
    await log.finish("r")  # again: still finished
    assert await log.is_finished("r") is True
    # No appends after finish, not even of events already logged; the log is unchanged.
    for batch in (events(3, 4), events(1, 2), events(2, 3)):
        with pytest.raises(StreamFinished):
            await log.append("r", batch)
    assert await log.read("r", after=0) == events(1, 2)
    assert await log.last_seq("r") == 2
    # A run may finish with nothing logged; other runs are unaffected.
    await log.finish("silent")
    assert await log.is_finished("silent") is True
    assert await log.read("silent", after=0) == []
    with pytest.raises(StreamFinished):
        await log.append("silent", events(1, 1))
    await log.append("other", events(1, 1))
    assert await log.is_finished("other") is False


async def purge_by_age(log: EventLog) -> None:
    await log.append("done", events(1, 3))
    await log.finish("done")
    await log.finish("empty")
    await log.append("live", events(1, 2))
    # Finished just now: not an hour ago.
    assert await log.purge(3600) == 0
    assert await log.purge(3600, unfinished_older_than_s=3600) == 0
    assert await log.last_seq("done") == 3 and await log.is_finished("done")
    # Finished at least 0 s ago: both finished runs go, 3 events and 2 markers.
    assert await log.purge(0) == 5
    for run_id in ("done", "empty"):
        assert await log.read(run_id, after=0) == []
        assert await log.last_seq(run_id) == 0
        assert await log.is_finished(run_id) is False
    assert await log.read("live", after=0) == events(1, 2)  # never finished: kept
    assert await log.purge(0) == 0
    # Unless asked to: a stream its worker never finished, 2 events and a marker.
    assert await log.purge(3600, unfinished_older_than_s=0) == 3
    assert await log.last_seq("live") == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ages"):
            await log.purge(bad)
        with pytest.raises(ValueError, match="ages"):
            await log.purge(0, unfinished_older_than_s=bad)


async def a_finish_racing_appends_splits_them_cleanly(log: EventLog) -> None:
    """Every batch is logged whole, before the finish, or not at all (StreamFinished)."""
    for attempt in range(3):
        run_id = f"race{attempt}"
        await log.append(run_id, events(1, 1))
        batches = [events(2 + 10 * n, 11 + 10 * n) for n in range(20)]

        async def finish_midway(run_id: str = run_id) -> None:
            await asyncio.sleep(0)
            await log.finish(run_id)

        results = await asyncio.gather(*(log.append(run_id, batch) for batch in batches),
                                       finish_midway(), return_exceptions=True)
        assert all(result is None or isinstance(result, StreamFinished) for result in results)
        logged = set(seqs(await log.read(run_id, after=0, limit=1000)))
        for batch, result in zip(batches, results, strict=False):
            wanted = set(seqs(batch))
            assert wanted <= logged if result is None else not wanted & logged
        assert await log.is_finished(run_id)


SCENARIOS: list[Scenario] = [
    append_then_read,
    append_is_idempotent,
    data_is_binary_safe,
    a_large_batch_is_logged_in_order,
    malformed_batches_log_nothing,
    finish_closes_the_stream,
    purge_by_age,
    a_finish_racing_appends_splits_them_cleanly,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_log_on_store(database_url: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with log_for(database_url) as log:
            assert isinstance(log, SqliteEventLog | PostgresEventLog)
            await scenario(log)

    run(main())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_log_in_memory(scenario: Scenario) -> None:
    async def main() -> None:
        async with log_for("memory:") as log:
            assert isinstance(log, MemoryEventLog)
            await scenario(log)

    run(main())


# --- Store-specific behaviour --------------------------------------------------------


def _clocked_purge_checks(make: Callable[[Callable[[], float]], Awaitable[EventLog]]) -> None:
    now = [1_000.0]

    async def main() -> None:
        log = await make(lambda: now[0])
        await log.append("old", events(1, 2))
        await log.finish("old")  # finished at 1000
        now[0] = 1030.0
        await log.append("new", events(1, 1))
        await log.finish("new")  # finished at 1030
        await log.append("stuck", events(1, 1))  # opened at 1030, never finished
        now[0] = 1059.0
        assert await log.purge(60) == 0  # old: 59 s ago
        now[0] = 1060.0
        assert await log.purge(60) == 3  # old: exactly 60 s ago, 2 events and its marker
        assert await log.is_finished("old") is False and await log.is_finished("new")
        assert await log.purge(60, unfinished_older_than_s=31) == 0
        now[0] = 1090.0
        assert await log.purge(61) == 0
        assert await log.purge(60, unfinished_older_than_s=60) == 4
        assert await log.read("stuck", after=0) == [] and not await log.is_finished("new")
        # A clock stepped back purges nothing early.
        await log.append("later", events(1, 1))
        await log.finish("later")
        now[0] = 900.0
        assert await log.purge(0) == 0

    run(main())


def test_memory_purge_by_injected_clock() -> None:
    """Retention is measured from finish, boundary included, on the injected clock."""
    async def make(clock: Callable[[], float]) -> EventLog:
        return MemoryEventLog(clock=clock)

    _clocked_purge_checks(make)


def test_sqlite_purge_by_injected_clock(tmp_path: Path) -> None:
    """The same retention on the SQLite store, timed by its injected clock."""
    conns: list[aiosqlite.Connection] = []

    async def make(clock: Callable[[], float]) -> EventLog:
        conn = await aiosqlite.connect(tmp_path / "clock.sqlite", isolation_level=None)
        conns.append(conn)
        log = SqliteEventLog(conn, clock=clock)
        await log.setup()
        await log.setup()  # as every start does: changes nothing
        return log

    try:
        _clocked_purge_checks(make)
    finally:
        async def close() -> None:
            for conn in conns:
                await conn.close()

        run(close())


def test_postgres_purge_by_database_clock(postgres: PostgresServer) -> None:
    """On Postgres, retention is timed by the database clock: backdated finishes go."""
    url = postgres.create_database()

    async def main() -> None:
        async with log_for(url) as log:
            for run_id in ("a", "b", "c"):
                await log.append(run_id, events(1, 2))
                await log.finish(run_id)
            await log.append("stuck", events(1, 1))
            execute_raw(url, "UPDATE graphgate_run_streams SET"
                        " finished_at = now() - interval '2 hours' WHERE run_id IN ('a', 'b')")
            execute_raw(url, "UPDATE graphgate_run_streams SET"
                        " created_at = now() - interval '3 hours' WHERE run_id = 'stuck'")
            assert await log.purge(3 * 3600) == 0
            assert await log.purge(3600) == 6
            assert await log.is_finished("c") and await log.last_seq("c") == 2
            assert await log.last_seq("stuck") == 1
            assert await log.purge(3600, unfinished_older_than_s=4 * 3600) == 0
            assert await log.purge(3600, unfinished_older_than_s=2 * 3600) == 2
            assert await log.last_seq("stuck") == 0

    run(main())


def test_two_workers_share_the_log(database_url: str) -> None:
    """Two processes' worth of connections (or pools): one appends and finishes, the
    other reads along, and cannot append after the finish; a restart keeps it all."""
    async def main() -> None:
        async with log_for(database_url) as one, log_for(database_url) as two:
            await one.append("r", events(1, 3))
            assert await two.read("r", after=0) == events(1, 3)
            await two.append("r", events(3, 4))  # a retry from the other worker
            assert await one.read("r", after=2) == events(3, 4)
            assert await two.last_seq("r") == 4
            await one.finish("r")
            assert await two.is_finished("r")
            with pytest.raises(StreamFinished):
                await two.append("r", events(5, 5))
        async with log_for(database_url) as reopened:
            assert await reopened.read("r", after=0) == events(1, 4)
            assert await reopened.is_finished("r")

    run(main())


def test_sqlite_shared_connection_interleaves_safely(tmp_path: Path) -> None:
    """The log, runs, threads and leases share one autocommit connection: a flood of
    concurrent writes from all of them neither fails nor loses anything."""
    async def main() -> None:
        url = f"sqlite:///{tmp_path}/shared.sqlite"
        async with open_persistence(make_settings(url)) as persistence:
            log, threads, leases = persistence.events, persistence.threads, persistence.leases
            await asyncio.gather(
                *(log.append(f"r{n % 4}", events(1 + 50 * (n // 4), 50 + 50 * (n // 4)))
                  for n in range(40)),
                *(threads.touch("owner", f"t{n}", "demo") for n in range(40)),
                *(leases.acquire(f"t{n}", f"r{n}", 30) for n in range(40)),
                *(log.finish(f"done{n}") for n in range(10)),
            )
            for n in range(4):
                assert await log.last_seq(f"r{n}") == 500
                assert len(await log.read(f"r{n}", after=0)) == 500
            assert await threads.count("owner") == 40
            assert await log.purge(0) == 10

    run(main())


def test_postgres_migration_is_idempotent(postgres: PostgresServer) -> None:
    """Migrating twice (every start does) keeps the tables and their rows."""
    url = postgres.create_database()

    async def main() -> None:
        settings = make_settings(url)
        async with log_for(url) as log:
            await log.append("r", events(1, 2))
        pool = make_pool(settings)
        await pool.open()
        try:
            await migrate_postgres(pool)
            await migrate_postgres(pool)
        finally:
            await pool.close()
        async with log_for(url) as log:
            assert await log.read("r", after=0) == events(1, 2)

    run(main())
    with psycopg.connect(url) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        indexes = {row[0] for row in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"graphgate_runs", "graphgate_run_events", "graphgate_run_streams"} <= tables
    assert {"graphgate_runs_owner_thread_created", "graphgate_run_streams_finished"} <= indexes


def test_sqlite_setup_with_workers_racing(tmp_path: Path) -> None:
    """Workers starting together on a fresh file all create the tables, none fails."""
    async def main() -> None:
        path = tmp_path / "race.sqlite"
        conns = [await aiosqlite.connect(path, isolation_level=None) for _ in range(4)]
        try:
            for conn in conns:
                await conn.execute("PRAGMA busy_timeout=5000")
            logs = [SqliteEventLog(conn) for conn in conns]
            await asyncio.gather(*(log.setup() for log in logs),
                                 *(SqliteRuns(conn).setup() for conn in conns))
            await logs[0].append("r", events(1, 1))
            await logs[3].finish("r")
            with pytest.raises(StreamFinished):
                await logs[1].append("r", events(2, 2))
        finally:
            for conn in conns:
                await conn.close()

    run(main())
