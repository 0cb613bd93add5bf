"""Thread leases, for each store: exclusive, renewable, releasable, and self-expiring."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from service.persistence import open_persistence
from service.persistence.leases import MemoryLeases, ThreadLeases
from tests.conftest import make_settings
from tests.support.servers import ThreadServer
from tests.support.sse import slow_run


@asynccontextmanager
async def leases_for(database_url: str) -> AsyncIterator[ThreadLeases]:
    async with open_persistence(make_settings(database_url)) as persistence:
        yield persistence.leases


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_lease_lifecycle(database_url: str) -> None:
    """One holder at a time; only the holder renews or releases; release frees it."""
    async def scenario() -> None:
        async with leases_for(database_url) as leases:
            assert await leases.acquire("t", "run-1", 30)
            assert not await leases.acquire("t", "run-2", 30)
            assert await leases.acquire("other", "run-2", 30)
            assert await leases.renew_many([("t", "run-1")], 30) == {("t", "run-1")}
            assert await leases.renew_many([("t", "run-2")], 30) == set()
            # One call renews many: only the pairs still held come back.
            assert await leases.renew_many(
                [("t", "run-1"), ("other", "run-2"), ("t", "run-2"), ("gone", "run-9")], 30,
            ) == {("t", "run-1"), ("other", "run-2")}
            assert await leases.renew_many([], 30) == set()
            await leases.release("t", "run-2")  # not the holder: no effect
            assert not await leases.acquire("t", "run-3", 30)
            await leases.release("t", "run-1")
            assert await leases.acquire("t", "run-3", 30)

    run(scenario)


def test_renewing_many_leases_at_once(database_url: str) -> None:
    """A worker renews all its leases in one call: more than SQLite binds in a statement."""
    async def scenario() -> None:
        async with leases_for(database_url) as leases:
            held = [(f"t{i}", f"run-{i}") for i in range(1000)]
            for thread_id, run_id in held:
                assert await leases.acquire(thread_id, run_id, 0.5)
            assert await leases.release("t7", "run-7") is None
            renewed = await leases.renew_many(held, 30)
            assert renewed == set(held) - {("t7", "run-7")}
            await asyncio.sleep(0.7)  # past the first ttl: only renewals still hold
            assert not await leases.acquire("t999", "intruder", 30)
            assert await leases.acquire("t7", "next", 30)

    run(scenario)


def test_expired_lease_can_be_taken_over(database_url: str) -> None:
    """A lease its holder stopped renewing (a crashed worker) frees itself after its ttl."""
    async def scenario() -> None:
        async with leases_for(database_url) as leases:
            assert await leases.acquire("t", "crashed", 0.2)
            assert not await leases.acquire("t", "next", 30)
            await asyncio.sleep(0.4)
            assert await leases.acquire("t", "next", 30)
            assert await leases.renew_many([("t", "crashed")], 30) == set()

    run(scenario)


def test_memory_leases_with_a_fake_clock() -> None:
    """The in-process leases expire by the injected clock."""
    now = [100.0]
    leases = MemoryLeases(clock=lambda: now[0])

    async def scenario() -> None:
        assert await leases.acquire("t", "a", 10)
        now[0] = 109.0
        assert not await leases.acquire("t", "b", 10)
        now[0] = 111.0
        assert await leases.acquire("t", "b", 10)

    run(scenario)


def test_sqlite_leases_are_shared_between_processes_on_one_file(tmp_path: Path) -> None:
    """Two stores opened on one SQLite file (two workers) see each other's leases."""
    url = f"sqlite:///{tmp_path}/shared.sqlite"

    async def scenario() -> None:
        async with leases_for(url) as first, leases_for(url) as second:
            assert await first.acquire("t", "a", 30)
            assert not await second.acquire("t", "b", 30)
            await first.release("t", "a")
            assert await second.acquire("t", "b", 30)

    run(scenario)


def test_racing_acquires_have_one_winner(database_url: str) -> None:
    """Many simultaneous acquires on one thread: exactly one succeeds."""
    async def scenario() -> None:
        async with leases_for(database_url) as leases:
            results = await asyncio.gather(
                *(leases.acquire("race", f"run-{i}", 30) for i in range(8)))
            assert sum(results) == 1

    run(scenario)


def test_shutdown_releases_leases_of_open_streams(tmp_path: Path) -> None:
    """Stopping the server with a stream open releases its lease before the store closes."""
    db = tmp_path / "shutdown.sqlite"
    server = ThreadServer(make_settings(f"sqlite:///{db}")).start()
    try:
        with slow_run(server.url, "held-at-shutdown"):
            with sqlite3.connect(db) as conn:
                held = conn.execute("SELECT count(*) FROM graphgate_thread_leases").fetchone()
            assert held == (1,)
            server.stop()  # uvicorn cancels the stream after its graceful timeout
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        left = conn.execute("SELECT thread_id FROM graphgate_thread_leases").fetchall()
    assert left == []
