"""The run registry, identical on every store: records, owner isolation, listing, cancel.

Scenarios run on the in-memory store and, through `database_url`, on SQLite and on a real
Postgres.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from service.persistence import (
    MemoryRuns,
    PostgresRuns,
    RunExists,
    RunRecord,
    RunRegistry,
    SqliteRuns,
    open_persistence,
)
from tests.conftest import make_settings
from tests.persistence.test_threads import ALICE, BOB, TICK_S, execute_raw, run
from tests.persistence.test_threads_metadata import ROUND_TRIP

Scenario = Callable[[RunRegistry], Awaitable[None]]

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # what callers put in; every store stamps its own
# Kept as given: kwargs carry client config, which may hold what jsonb would refuse.
KWARGS: dict[str, Any] = {
    "stream_mode": ["values", "messages-tuple"],
    "stream_resumable": True,
    "on_disconnect": "continue",
    "config": {"configurable": {"nul": "a\x00b", "surrogate": "\ud800", "big": 2**70}},
    "context": None,
    "empty": {},
}


def new_run(thread_id: str = "t1", *, run_id: str | None = None, **changes: Any) -> RunRecord:
    record = RunRecord(
        run_id=str(uuid.uuid4()) if run_id is None else run_id, thread_id=thread_id,
        assistant_id="asst-demo", graph="demo", status="pending", metadata={"user": "u1"},
        kwargs=KWARGS, multitask_strategy="reject", created_at=EPOCH, updated_at=EPOCH)
    return replace(record, **changes)


def run_ids(records: list[RunRecord]) -> list[str]:
    return [record.run_id for record in records]


@asynccontextmanager
async def runs_for(database_url: str) -> AsyncIterator[RunRegistry]:
    async with open_persistence(make_settings(database_url)) as persistence:
        yield persistence.runs


# --- Scenarios every store must pass ------------------------------------------------


async def create_then_get(runs: RunRegistry) -> None:
    before = datetime.now(UTC)
    given = new_run()
    await runs.create(ALICE, given)
    stored = await runs.get(ALICE, "t1", given.run_id)
    assert stored is not None
    # Everything as given but the timestamps, which the store stamps.
    assert replace(stored, created_at=EPOCH, updated_at=EPOCH) == given
    assert stored.created_at == stored.updated_at
    assert stored.created_at.utcoffset() == timedelta(0)
    assert abs(stored.created_at - before) < timedelta(seconds=5)
    assert await runs.get_any(ALICE, given.run_id) == stored

    # A run id is taken once, whoever asks; the stored run does not change.
    with pytest.raises(RunExists):
        await runs.create(ALICE, replace(given, status="running", metadata={"x": 1}))
    with pytest.raises(RunExists):
        await runs.create(BOB, replace(given, thread_id="other"))
    assert await runs.get(ALICE, "t1", given.run_id) == stored
    assert await runs.get(BOB, "other", given.run_id) is None


async def reads_are_owner_and_thread_scoped(runs: RunRegistry) -> None:
    mine = new_run()
    await runs.create(ALICE, mine)
    # Another owner with the same thread id, another thread, an unknown run.
    assert await runs.get(BOB, "t1", mine.run_id) is None
    assert await runs.get("tenantB/alice", "t1", mine.run_id) is None
    assert await runs.get(ALICE, "t2", mine.run_id) is None
    assert await runs.get(ALICE, "t1", str(uuid.uuid4())) is None
    assert await runs.get_any(BOB, mine.run_id) is None
    assert await runs.get_any(ALICE, str(uuid.uuid4())) is None
    assert await runs.list(BOB, "t1", limit=10) == []
    assert await runs.request_cancel(BOB, "t1", mine.run_id, "interrupt") is None
    assert await runs.request_cancel(ALICE, "t2", mine.run_id, "interrupt") is None
    assert await runs.cancel_requested(mine.run_id) is None
    assert await runs.delete(BOB, "t1", mine.run_id) is False
    assert await runs.delete(ALICE, "t2", mine.run_id) is False
    assert await runs.delete_thread(BOB, "t1") == 0
    stored = await runs.get(ALICE, "t1", mine.run_id)
    assert stored is not None and run_ids(await runs.list(ALICE, "t1", limit=10)) == [mine.run_id]
    # Ids no store can hold find nothing, in every store alike.
    for owner, thread_id, run_id in ((ALICE, "t1", "r\x00"), ("a\x00", "t1", mine.run_id),
                                     (ALICE, "t\x00", mine.run_id)):
        assert await runs.get(owner, thread_id, run_id) is None
        assert await runs.request_cancel(owner, thread_id, run_id, "rollback") is None
        assert await runs.delete(owner, thread_id, run_id) is False
    for owner, run_id in ((ALICE, "r\x00"), ("a\x00", mine.run_id)):
        assert await runs.get_any(owner, run_id) is None
    for owner, thread_id in (("a\x00", "t1"), (ALICE, "t\x00")):
        assert await runs.list(owner, thread_id, limit=10) == []
        assert await runs.delete_thread(owner, thread_id) == 0
    assert await runs.cancel_requested("r\x00") is None
    await runs.set_status("r\x00", "error")
    assert await runs.get(ALICE, "t1", mine.run_id) == stored


async def list_is_newest_first_filtered_and_paged(runs: RunRegistry) -> None:
    made = []
    for n in range(4):
        record = new_run(status="success" if n % 2 else "error")
        await runs.create(ALICE, record)
        made.append(record.run_id)
        await asyncio.sleep(TICK_S)
    await runs.create(ALICE, new_run("t2"))  # another thread
    await runs.create(BOB, new_run("t1"))  # another owner, same thread id
    newest_first = made[::-1]
    assert run_ids(await runs.list(ALICE, "t1", limit=10)) == newest_first
    assert run_ids(await runs.list(ALICE, "t1", limit=2)) == newest_first[:2]
    assert run_ids(await runs.list(ALICE, "t1", limit=2, offset=2)) == newest_first[2:]
    assert run_ids(await runs.list(ALICE, "t1", limit=2, offset=3)) == newest_first[3:]
    assert await runs.list(ALICE, "t1", limit=2, offset=4) == []
    assert await runs.list(ALICE, "t1", limit=0) == []
    assert run_ids(await runs.list(ALICE, "t1", limit=10, status="success")) == [
        made[3], made[1]]
    assert run_ids(await runs.list(ALICE, "t1", limit=1, offset=1, status="error")) == [
        made[0]]
    assert await runs.list(ALICE, "t1", limit=10, status="running") == []
    assert len(await runs.list(ALICE, "t2", limit=10)) == 1
    assert await runs.list(ALICE, "t3", limit=10) == []
    # Listed records are whole, as get() returns them.
    first = (await runs.list(ALICE, "t1", limit=1))[0]
    assert first == await runs.get(ALICE, "t1", first.run_id)
    with pytest.raises(ValueError, match="negative"):
        await runs.list(ALICE, "t1", limit=-1)
    with pytest.raises(ValueError, match="negative"):
        await runs.list(ALICE, "t1", limit=1, offset=-1)
    with pytest.raises(ValueError, match="status"):
        await runs.list(ALICE, "t1", limit=1, status="idle")


async def set_status_bumps_updated_at(runs: RunRegistry) -> None:
    record = new_run()
    await runs.create(ALICE, record)
    created = await runs.get(ALICE, "t1", record.run_id)
    assert created is not None
    for status in ("running", "success", "error", "timeout", "interrupted", "pending"):
        await asyncio.sleep(TICK_S)
        before = await runs.get(ALICE, "t1", record.run_id)
        await runs.set_status(record.run_id, status)
        after = await runs.get(ALICE, "t1", record.run_id)
        assert before is not None and after is not None
        assert after.status == status
        assert after.updated_at > before.updated_at and after.created_at == created.created_at
        assert replace(after, status="pending", updated_at=created.updated_at) == created
    await runs.set_status(str(uuid.uuid4()), "running")  # no such run: nothing happens
    with pytest.raises(ValueError, match="status"):
        await runs.set_status(record.run_id, "busy")
    after = await runs.get(ALICE, "t1", record.run_id)
    assert after is not None and after.status == "pending"


async def cancel_request_round_trip(runs: RunRegistry) -> None:
    record = new_run(status="running")
    other = new_run()
    await runs.create(ALICE, record)
    await runs.create(ALICE, other)
    before = await runs.get(ALICE, "t1", record.run_id)
    assert before is not None
    assert await runs.cancel_requested(record.run_id) is None
    await asyncio.sleep(TICK_S)
    requested = await runs.request_cancel(ALICE, "t1", record.run_id, "interrupt")
    assert requested is not None
    assert requested.status == "running"  # the worker sets the outcome, not the request
    assert requested.updated_at > before.updated_at
    assert requested == await runs.get(ALICE, "t1", record.run_id)
    assert await runs.cancel_requested(record.run_id) == "interrupt"
    assert await runs.cancel_requested(other.run_id) is None
    # A later request replaces the action.
    assert await runs.request_cancel(ALICE, "t1", record.run_id, "rollback") is not None
    assert await runs.cancel_requested(record.run_id) == "rollback"
    with pytest.raises(ValueError, match="action"):
        await runs.request_cancel(ALICE, "t1", record.run_id, "stop")
    assert await runs.cancel_requested(record.run_id) == "rollback"
    assert await runs.request_cancel(ALICE, "t1", str(uuid.uuid4()), "interrupt") is None
    assert await runs.cancel_requested(str(uuid.uuid4())) is None


async def delete_and_delete_thread(runs: RunRegistry) -> None:
    one, two, three = new_run(), new_run(), new_run()
    elsewhere, bobs = new_run("t2"), new_run("t1")
    for record in (one, two, three, elsewhere):
        await runs.create(ALICE, record)
    await runs.create(BOB, bobs)
    assert await runs.delete(ALICE, "t1", one.run_id) is True
    assert await runs.delete(ALICE, "t1", one.run_id) is False
    assert await runs.get_any(ALICE, one.run_id) is None
    assert await runs.cancel_requested(one.run_id) is None
    assert await runs.delete_thread(ALICE, "t1") == 2
    assert await runs.delete_thread(ALICE, "t1") == 0
    assert await runs.list(ALICE, "t1", limit=10) == []
    assert run_ids(await runs.list(ALICE, "t2", limit=10)) == [elsewhere.run_id]
    assert run_ids(await runs.list(BOB, "t1", limit=10)) == [bobs.run_id]
    # A deleted run's id may be used again.
    await runs.create(ALICE, replace(one, thread_id="t3"))
    assert await runs.get(ALICE, "t3", one.run_id) is not None


async def values_round_trip_and_unstorable_ones_are_refused(runs: RunRegistry) -> None:
    record = new_run(metadata=ROUND_TRIP, assistant_id="ünï 🙂", graph="g\"'\\",
                     multitask_strategy="enqueue", thread_id="t-_1")
    await runs.create("tenant ü/ö", record)
    stored = await runs.get("tenant ü/ö", "t-_1", record.run_id)
    assert stored is not None
    assert stored.metadata == ROUND_TRIP and stored.kwargs == KWARGS
    assert (stored.assistant_id, stored.graph, stored.multitask_strategy) == (
        "ünï 🙂", "g\"'\\", "enqueue")
    # Each read is a fresh copy.
    stored.metadata["added"] = 1
    stored.kwargs["config"]["configurable"].clear()
    again = await runs.get_any("tenant ü/ö", record.run_id)
    assert again is not None and again.metadata == ROUND_TRIP and again.kwargs == KWARGS

    bad: list[tuple[type[Exception], str | None, RunRecord, str]] = [
        (ValueError, "NUL", new_run(metadata={"a": "\x00"}), ALICE),
        (ValueError, None, new_run(metadata={"a": float("nan")}), ALICE),
        (ValueError, None, new_run(metadata={"a": "\udc80"}), ALICE),
        (TypeError, "keys", new_run(metadata={1: "x"}), ALICE),
        (TypeError, "JSON object", new_run(metadata=[]), ALICE),
        (TypeError, None, new_run(metadata={"a": object()}), ALICE),
        (ValueError, None, new_run(kwargs={"a": float("inf")}), ALICE),
        (TypeError, "keys", new_run(kwargs={"a": {2: "x"}}), ALICE),
        (TypeError, "JSON object", new_run(kwargs=None), ALICE),
        (TypeError, None, new_run(kwargs={"when": EPOCH}), ALICE),
        (ValueError, "status", new_run(status="busy"), ALICE),
        (ValueError, "NUL", new_run(run_id="r\x00"), ALICE),
        (ValueError, "empty", new_run(run_id=""), ALICE),
        (ValueError, "NUL", new_run(thread_id="t\x00"), ALICE),
        (ValueError, "NUL", new_run(graph="\x00"), ALICE),
        (ValueError, None, new_run(assistant_id="\ud800"), ALICE),
        (TypeError, "string", new_run(multitask_strategy=None), ALICE),
        (ValueError, "NUL", new_run(), "own\x00er"),
    ]
    for error, match, unstorable, owner in bad:
        with pytest.raises(error, match=match):
            await runs.create(owner, unstorable)
        assert await runs.get_any(owner, unstorable.run_id) is None
    assert await runs.list(ALICE, "t1", limit=10) == []


async def concurrent_writes_are_atomic(runs: RunRegistry) -> None:
    record = new_run()
    created = await asyncio.gather(
        *(runs.create(ALICE, replace(record, metadata={"n": n})) for n in range(10)),
        return_exceptions=True)
    assert sum(result is None for result in created) == 1
    assert all(isinstance(result, RunExists) for result in created if result is not None)
    await asyncio.gather(*(runs.create(ALICE, new_run()) for _ in range(20)))
    await asyncio.gather(
        *(runs.set_status(record.run_id, "running") for _ in range(5)),
        *(runs.request_cancel(ALICE, "t1", record.run_id, "interrupt") for _ in range(5)))
    assert await runs.cancel_requested(record.run_id) == "interrupt"
    assert len(await runs.list(ALICE, "t1", limit=100)) == 21
    assert await runs.delete_thread(ALICE, "t1") == 21


SCENARIOS: list[Scenario] = [
    create_then_get,
    reads_are_owner_and_thread_scoped,
    list_is_newest_first_filtered_and_paged,
    set_status_bumps_updated_at,
    cancel_request_round_trip,
    delete_and_delete_thread,
    values_round_trip_and_unstorable_ones_are_refused,
    concurrent_writes_are_atomic,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_registry_on_store(database_url: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with runs_for(database_url) as runs:
            assert isinstance(runs, SqliteRuns | PostgresRuns)
            await scenario(runs)

    run(main())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_registry_in_memory(scenario: Scenario) -> None:
    async def main() -> None:
        async with runs_for("memory:") as runs:
            assert isinstance(runs, MemoryRuns)
            await scenario(runs)

    run(main())


# --- Store-specific behaviour --------------------------------------------------------


def test_created_at_ties_list_in_run_id_order(database_url: str) -> None:
    """Runs created at the same instant list in run id order (code points)."""
    async def main() -> None:
        async with runs_for(database_url) as runs:
            for run_id in ("b", "a", "B", "_", "-", "c"):
                await runs.create(ALICE, new_run(run_id=run_id))
            execute_raw(database_url, "UPDATE graphgate_runs SET"
                        " created_at = (SELECT min(created_at) FROM graphgate_runs)")
            listed = await runs.list(ALICE, "t1", limit=10)
            assert run_ids(listed) == ["-", "B", "_", "a", "b", "c"]

    run(main())


def test_memory_ties_and_a_clock_stepping_back() -> None:
    """With an injected clock: ties list by run id, and nothing moves updated_at back."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    now = [t0]
    runs = MemoryRuns(clock=lambda: now[0])

    async def main() -> None:
        for run_id in ("b", "a", "c"):
            await runs.create(ALICE, new_run(run_id=run_id))
        assert run_ids(await runs.list(ALICE, "t1", limit=10)) == ["a", "b", "c"]
        now[0] = t0 - timedelta(minutes=5)
        await runs.set_status("a", "running")
        await runs.request_cancel(ALICE, "t1", "b", "interrupt")
        for run_id in ("a", "b"):
            record = await runs.get(ALICE, "t1", run_id)
            assert record is not None and record.created_at == record.updated_at == t0

    run(main())


def test_sqlite_clock_stepping_back_keeps_updated_at(tmp_path: Path) -> None:
    """A worker whose wall clock is behind does not move a run back in time."""
    now = [1_700_000_000.0]

    async def main() -> None:
        async with aiosqlite.connect(tmp_path / "clock.sqlite", isolation_level=None) as conn:
            runs = SqliteRuns(conn, clock=lambda: now[0])
            await runs.setup()
            await runs.setup()  # as every start does: changes nothing
            await runs.create(ALICE, new_run(run_id="r"))
            now[0] -= 300
            await runs.set_status("r", "running")
            cancelled = await runs.request_cancel(ALICE, "t1", "r", "rollback")
            record = await runs.get(ALICE, "t1", "r")
            assert cancelled is not None and record is not None and cancelled == record
            expected = datetime.fromtimestamp(1_700_000_000.0, UTC)
            assert record.created_at == record.updated_at == expected

    run(main())


def test_two_workers_share_runs(database_url: str) -> None:
    """Two processes' worth of connections (or pools) see each other's runs and cancels;
    records survive a restart, and migrating again changes nothing."""
    async def main() -> None:
        async with runs_for(database_url) as one, runs_for(database_url) as two:
            record = new_run()
            await one.create(ALICE, record)
            seen = await two.get(ALICE, "t1", record.run_id)
            assert seen is not None and seen == await one.get_any(ALICE, record.run_id)
            await two.request_cancel(ALICE, "t1", record.run_id, "interrupt")
            assert await one.cancel_requested(record.run_id) == "interrupt"
            await one.set_status(record.run_id, "interrupted")
            after = await two.get(ALICE, "t1", record.run_id)
            assert after is not None and after.status == "interrupted"
            with pytest.raises(RunExists):
                await two.create(ALICE, record)
        async with runs_for(database_url) as reopened:
            assert await reopened.get(ALICE, "t1", record.run_id) == after
            assert await reopened.cancel_requested(record.run_id) == "interrupt"

    run(main())
