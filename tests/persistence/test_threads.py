"""The thread registry, for each store: per-owner records, listing, isolation, durability."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import LiteralString

import aiosqlite
import psycopg
import pytest

from service.persistence import (
    MemoryThreads,
    SqliteThreads,
    ThreadRecord,
    ThreadRegistry,
    open_persistence,
    owner_namespace,
    storage_key,
)
from tests.conftest import make_settings
from tests.support.postgres import PostgresServer

Scenario = Callable[[ThreadRegistry], Awaitable[None]]

ALICE = "tenantA/alice"
BOB = "tenantA/bob"
# Far enough apart that the stores' clocks give distinct timestamps.
TICK_S = 0.01


@asynccontextmanager
async def threads_for(database_url: str) -> AsyncIterator[ThreadRegistry]:
    async with open_persistence(make_settings(database_url)) as persistence:
        yield persistence.threads


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await coro

    asyncio.run(main())


def execute_raw(database_url: str, sql: LiteralString) -> None:
    """A statement straight on the store, bypassing the registry."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql)


# Scenarios that every store must pass: run on SQLite and Postgres through
# `database_url`, and on the in-memory store.


async def touch_creates_then_updates(threads: ThreadRegistry) -> None:
    assert await threads.get(ALICE, "t1") is None
    before = datetime.now(UTC)
    await threads.touch(ALICE, "t1", "demo")
    first = await threads.get(ALICE, "t1")
    assert first is not None
    assert first.thread_id == "t1" and first.graph == "demo"
    assert first.created_at == first.updated_at
    assert first.created_at.utcoffset() == timedelta(0)
    # The Postgres clock is the database's, on this host; allow a little skew anyway.
    assert abs(first.created_at - before) < timedelta(seconds=5)

    await asyncio.sleep(TICK_S)
    await threads.touch(ALICE, "t1", "slow")
    second = await threads.get(ALICE, "t1")
    assert second is not None
    assert second.graph == "slow"
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.updated_at.utcoffset() == timedelta(0)


async def list_is_per_owner_newest_first_and_paged(threads: ThreadRegistry) -> None:
    for thread_id in ("a", "b", "c", "d"):
        await threads.touch(ALICE, thread_id, "demo")
        await asyncio.sleep(TICK_S)
    await threads.touch(BOB, "bob-only", "demo")
    await asyncio.sleep(TICK_S)
    await threads.touch(ALICE, "b", "demo")  # b is now Alice's newest

    def ids(records: list[ThreadRecord]) -> list[str]:
        return [record.thread_id for record in records]

    assert ids(await threads.list(ALICE, limit=10)) == ["b", "d", "c", "a"]
    assert ids(await threads.list(ALICE, limit=2)) == ["b", "d"]
    assert ids(await threads.list(ALICE, limit=2, offset=2)) == ["c", "a"]
    assert ids(await threads.list(ALICE, limit=2, offset=3)) == ["a"]
    assert await threads.list(ALICE, limit=2, offset=4) == []
    assert await threads.list(ALICE, limit=0) == []
    assert ids(await threads.list(BOB, limit=10)) == ["bob-only"]
    assert await threads.list("tenantB/alice", limit=10) == []
    with pytest.raises(ValueError, match="negative"):
        await threads.list(ALICE, limit=-1)
    with pytest.raises(ValueError, match="negative"):
        await threads.list(ALICE, limit=1, offset=-1)


async def same_thread_id_is_separate_per_owner(threads: ThreadRegistry) -> None:
    await threads.touch(ALICE, "shared", "demo")
    await asyncio.sleep(TICK_S)
    await threads.touch(BOB, "shared", "slow")
    alice = await threads.get(ALICE, "shared")
    bob = await threads.get(BOB, "shared")
    assert alice is not None and bob is not None
    assert (alice.graph, bob.graph) == ("demo", "slow")
    assert bob.created_at > alice.created_at

    await asyncio.sleep(TICK_S)
    await threads.touch(BOB, "shared", "failing")  # Bob's run leaves Alice's record alone
    assert await threads.get(ALICE, "shared") == alice


async def delete_only_affects_the_owner(threads: ThreadRegistry) -> None:
    await threads.touch(ALICE, "shared", "demo")
    await threads.touch(BOB, "shared", "demo")
    await threads.touch(ALICE, "mine", "demo")

    assert not await threads.delete(BOB, "mine")  # Alice's thread, not Bob's
    assert await threads.get(ALICE, "mine") is not None
    assert not await threads.delete(BOB, "nonexistent")

    assert await threads.delete(ALICE, "shared")
    assert await threads.get(ALICE, "shared") is None
    assert await threads.get(BOB, "shared") is not None
    assert not await threads.delete(ALICE, "shared")  # already gone
    assert [r.thread_id for r in await threads.list(ALICE, limit=10)] == ["mine"]
    assert [r.thread_id for r in await threads.list(BOB, limit=10)] == ["shared"]


async def owners_are_opaque_text(threads: ThreadRegistry) -> None:
    """Owners with quotes, SQL and non-ASCII are just text, matched exactly."""
    odd = ["o'brien\"; DROP TABLE graphgate_threads; --", "tenänt/ünïcode", "%", "_", "a/b"]
    for owner in odd:
        await threads.touch(owner, "t", f"g-{len(owner)}")
    for owner in odd:
        record = await threads.get(owner, "t")
        assert record is not None and record.graph == f"g-{len(owner)}"
        assert [r.thread_id for r in await threads.list(owner, limit=10)] == ["t"]
    assert await threads.get("A/B", "t") is None  # case matters
    assert await threads.get("tenänt/ünïcode ", "t") is None


SCENARIOS: list[Scenario] = [
    touch_creates_then_updates,
    list_is_per_owner_newest_first_and_paged,
    same_thread_id_is_separate_per_owner,
    delete_only_affects_the_owner,
    owners_are_opaque_text,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_registry_on_store(database_url: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with threads_for(database_url) as threads:
            await scenario(threads)

    run(main())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_registry_in_memory(scenario: Scenario) -> None:
    async def main() -> None:
        async with threads_for("memory:") as threads:
            assert isinstance(threads, MemoryThreads)
            await scenario(threads)

    run(main())


def test_list_breaks_timestamp_ties_by_thread_id(database_url: str) -> None:
    """Threads updated at the same instant list in thread-id (code point) order."""
    async def main() -> None:
        async with threads_for(database_url) as threads:
            for thread_id in ("b", "a", "B", "_", "-", "c"):
                await threads.touch(ALICE, thread_id, "demo")
            execute_raw(database_url, "UPDATE graphgate_threads SET updated_at ="
                                      " (SELECT min(updated_at) FROM graphgate_threads)")
            listed = [r.thread_id for r in await threads.list(ALICE, limit=10)]
            assert listed == sorted(["b", "a", "B", "_", "-", "c"])

    run(main())


def test_records_survive_reopening(database_url: str) -> None:
    """Closing the store and opening it again (a restart) keeps every owner's threads."""
    async def main() -> None:
        async with threads_for(database_url) as threads:
            await threads.touch(ALICE, "kept", "demo")
            await threads.touch(BOB, "kept", "slow")
            before = await threads.get(ALICE, "kept")
        async with threads_for(database_url) as threads:
            assert await threads.get(ALICE, "kept") == before
            bob = await threads.get(BOB, "kept")
            assert bob is not None and bob.graph == "slow"
            await threads.touch(ALICE, "later", "demo")
            assert [r.thread_id for r in await threads.list(ALICE, limit=10)] == [
                "later", "kept"]

    run(main())


def test_memory_ties_and_a_clock_stepping_back() -> None:
    """With an injected clock: ties list by id, and updated_at never moves backwards."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    now = [t0]
    threads = MemoryThreads(clock=lambda: now[0])

    async def main() -> None:
        for thread_id in ("b", "a", "c"):
            await threads.touch(ALICE, thread_id, "demo")
        assert [r.thread_id for r in await threads.list(ALICE, limit=10)] == ["a", "b", "c"]
        now[0] = t0 - timedelta(minutes=5)
        await threads.touch(ALICE, "a", "slow")
        record = await threads.get(ALICE, "a")
        assert record is not None and record.graph == "slow" and record.updated_at == t0

    run(main())


def test_sqlite_clock_stepping_back_keeps_updated_at(tmp_path: Path) -> None:
    """A worker whose wall clock is behind does not move a thread back in the listing."""
    now = [1_700_000_000.0]

    async def main() -> None:
        async with aiosqlite.connect(tmp_path / "clock.sqlite", isolation_level=None) as conn:
            threads = SqliteThreads(conn, clock=lambda: now[0])
            await threads.setup()
            await threads.touch(ALICE, "t", "demo")
            now[0] -= 300
            await threads.touch(ALICE, "t", "slow")
            record = await threads.get(ALICE, "t")
            assert record is not None and record.graph == "slow"
            assert record.updated_at == record.created_at == datetime.fromtimestamp(
                1_700_000_000.0, UTC)

    run(main())


def test_storage_key_is_per_owner_and_opaque() -> None:
    key = storage_key(ALICE, "t1")
    assert key == f"{owner_namespace(ALICE)}.t1"
    assert len(owner_namespace(ALICE)) == 32
    assert all(c in "0123456789abcdef" for c in owner_namespace(ALICE))
    assert "tenantA" not in key and "alice" not in key
    assert storage_key(BOB, "t1") != key
    assert storage_key(ALICE, "t2") != key
    assert storage_key(ALICE, "t1") == key  # stable
    # A thread id can never reach into another namespace: keys split at the only '.'.
    assert storage_key(BOB, "t1").split(".") == [owner_namespace(BOB), "t1"]


@pytest.mark.parametrize("thread_id", [".", "a.b", f"{owner_namespace(BOB)}.t1", "t1."])
def test_storage_key_rejects_dots(thread_id: str) -> None:
    with pytest.raises(ValueError, match=r"'\.'"):
        storage_key(ALICE, thread_id)


def test_postgres_times_are_utc_whatever_the_session_time_zone(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TIMESTAMPTZ comes back in the session's zone; the registry still returns UTC."""
    monkeypatch.setenv("PGTZ", "Asia/Kolkata")  # +05:30, read by libpq on connect
    url = postgres.create_database()

    async def main() -> None:
        async with threads_for(url) as threads:
            before = datetime.now(UTC)
            await threads.touch(ALICE, "t", "demo")
            record = await threads.get(ALICE, "t")
            assert record is not None
            assert record.created_at.tzinfo is UTC and record.updated_at.tzinfo is UTC
            assert abs(record.created_at - before) < timedelta(seconds=5)
            [listed] = await threads.list(ALICE, limit=1)
            assert listed.updated_at.tzinfo is UTC

    run(main())
