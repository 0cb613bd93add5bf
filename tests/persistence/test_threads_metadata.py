"""The thread registry's metadata, status and search, identical on every store.

Scenarios run on the in-memory store and, through `database_url`, on SQLite and on a real
Postgres; the Postgres run is also what pins the metadata filter to `jsonb @>`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
import pytest

from service.persistence import MemoryThreads, SqliteThreads, ThreadRecord, ThreadRegistry
from tests.persistence.test_threads import ALICE, BOB, TICK_S, execute_raw, run, threads_for

Scenario = Callable[[ThreadRegistry], Awaitable[None]]


def ids(records: list[ThreadRecord]) -> list[str]:
    return [record.thread_id for record in records]


# Every JSON shape, and keys that would break a naively quoted JSON path.
ROUND_TRIP: dict[str, Any] = {
    "str": "plain",
    "unicode": "ünïcödé 日本語 🙂",
    "escapes": 'quote" backslash\\ newline\n tab\t \u2028 \x01',
    "int": 42,
    "negative": -7,
    "zero": 0,
    "big": 2**70,
    "float": 0.1 + 0.2,
    "negative_float": -1.5,
    "small": 1.25e-7,
    "true": True,
    "false": False,
    "null": None,
    "nested": {"a": {"b": {"c": [1, {"d": None}, [], {}]}}},
    "list": [1, "1", 1.5, True, None, {"x": "y"}, ["z"]],
    "empty_object": {},
    "empty_list": [],
    'key "quoted"': "v",
    "dot.ted": "v",
    "$.path[0]": "v",
    "": "empty key",
    "ключ": "значение",
}


# --- Scenarios every store must pass ------------------------------------------------


async def create_then_get(threads: ThreadRegistry) -> None:
    before = datetime.now(UTC)
    created = await threads.create(ALICE, "t1", {"user": "u1"})
    assert created is not None
    assert (created.thread_id, created.graph, created.status) == ("t1", None, "idle")
    assert created.metadata == {"user": "u1"}
    assert created.created_at == created.updated_at
    assert created.created_at.utcoffset() == timedelta(0)
    assert abs(created.created_at - before) < timedelta(seconds=5)
    assert await threads.get(ALICE, "t1") == created

    # Taken: nothing changes, whatever the new metadata says.
    await asyncio.sleep(TICK_S)
    assert await threads.create(ALICE, "t1", {"user": "intruder"}) is None
    assert await threads.get(ALICE, "t1") == created
    # Also taken when the first came from a run rather than create().
    await threads.touch(ALICE, "ran", "demo")
    assert await threads.create(ALICE, "ran", {"x": 1}) is None
    ran = await threads.get(ALICE, "ran")
    assert ran is not None and ran.graph == "demo" and ran.metadata == {}

    # The same id is free for another owner, and stays separate.
    bobs = await threads.create(BOB, "t1", {})
    assert bobs is not None and bobs.metadata == {}
    assert await threads.get(ALICE, "t1") == created


async def touch_keeps_metadata_and_sets_status(threads: ThreadRegistry) -> None:
    await threads.touch(ALICE, "fresh", "demo")
    fresh = await threads.get(ALICE, "fresh")
    assert fresh is not None
    assert (fresh.graph, fresh.metadata, fresh.status) == ("demo", {}, "idle")

    created = await threads.create(ALICE, "t", {"k": "v"})
    assert created is not None
    await asyncio.sleep(TICK_S)
    await threads.touch(ALICE, "t", "demo", status="busy")
    busy = await threads.get(ALICE, "t")
    assert busy is not None
    assert (busy.graph, busy.metadata, busy.status) == ("demo", {"k": "v"}, "busy")
    assert busy.created_at == created.created_at and busy.updated_at > created.updated_at

    await threads.touch(ALICE, "t", "slow")  # no status: the status stays
    kept = await threads.get(ALICE, "t")
    assert kept is not None and (kept.graph, kept.status) == ("slow", "busy")

    await threads.touch(ALICE, "new", "demo", status="interrupted")  # inserted with it
    new = await threads.get(ALICE, "new")
    assert new is not None and (new.status, new.metadata) == ("interrupted", {})

    with pytest.raises(ValueError, match="status"):
        await threads.touch(ALICE, "t", "demo", status="running")
    with pytest.raises(ValueError, match="graph"):
        await threads.touch(ALICE, "t", "")
    assert await threads.get(ALICE, "t") == kept


async def update_merges_top_level_keys(threads: ThreadRegistry) -> None:
    created = await threads.create(
        ALICE, "t", {"keep": 1, "replace": "old", "nested": {"a": 1, "b": 2}, "gone": "x"})
    assert created is not None
    await asyncio.sleep(TICK_S)
    updated = await threads.update(
        ALICE, "t", metadata={"replace": "new", "nested": {"c": 3}, "gone": None, "added": []})
    assert updated is not None
    # Top-level keys overwrite, nested objects are replaced (not merged), null is a value.
    assert updated.metadata == {
        "keep": 1, "replace": "new", "nested": {"c": 3}, "gone": None, "added": []}
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert (updated.graph, updated.status) == (None, "idle")
    assert await threads.get(ALICE, "t") == updated

    await asyncio.sleep(TICK_S)
    bumped = await threads.update(ALICE, "t")  # no metadata: only updated_at moves
    assert bumped is not None
    assert bumped.metadata == updated.metadata and bumped.updated_at > updated.updated_at
    assert await threads.update(ALICE, "t", metadata={}) is not None

    assert await threads.update(ALICE, "missing", metadata={"a": 1}) is None
    assert await threads.get(ALICE, "missing") is None  # not created by the update


async def set_status_bumps_updated_at(threads: ThreadRegistry) -> None:
    await threads.touch(ALICE, "t", "demo")
    first = await threads.get(ALICE, "t")
    assert first is not None
    for status in ("busy", "interrupted", "error", "idle"):
        await asyncio.sleep(TICK_S)
        before = await threads.get(ALICE, "t")
        await threads.set_status(ALICE, "t", status)
        after = await threads.get(ALICE, "t")
        assert before is not None and after is not None
        assert after.status == status and after.updated_at > before.updated_at
        assert (after.graph, after.created_at) == ("demo", first.created_at)
    with pytest.raises(ValueError, match="status"):
        await threads.set_status(ALICE, "t", "IDLE")
    await threads.set_status(ALICE, "missing", "busy")  # nothing to do, and no error
    assert await threads.get(ALICE, "missing") is None


async def metadata_round_trips_exactly(threads: ThreadRegistry) -> None:
    created = await threads.create(ALICE, "t", ROUND_TRIP)
    assert created is not None and created.metadata == ROUND_TRIP
    got = await threads.get(ALICE, "t")
    assert got is not None and got.metadata == ROUND_TRIP
    assert type(got.metadata["big"]) is int and type(got.metadata["float"]) is float
    [found] = await threads.search(ALICE, metadata=ROUND_TRIP, limit=10)
    assert found.metadata == ROUND_TRIP

    await threads.create(ALICE, "u", {})
    updated = await threads.update(ALICE, "u", metadata=ROUND_TRIP)
    assert updated is not None and updated.metadata == ROUND_TRIP

    # Records are copies: changing one changes nothing stored.
    got.metadata["str"] = "changed"
    got.metadata["nested"]["a"] = None
    again = await threads.get(ALICE, "t")
    assert again is not None and again.metadata == ROUND_TRIP


BAD_METADATA: list[tuple[Any, type[Exception]]] = [
    ({"x": float("nan")}, ValueError),
    ({"x": [float("inf")]}, ValueError),
    ({"x": "a\x00b"}, ValueError),  # jsonb has no NUL
    ({"a\x00": 1}, ValueError),
    ({"x": "\ud800"}, ValueError),  # a lone surrogate is not UTF-8
    ({1: "x"}, TypeError),  # JSON would turn the key into "1"
    ({"x": {2: "y"}}, TypeError),
    ({"x": {1, 2}}, TypeError),
    ({"x": object()}, TypeError),
    (["not", "an", "object"], TypeError),
    ([], TypeError),  # falsy, but still not an object
]


async def unstorable_metadata_is_refused_everywhere(threads: ThreadRegistry) -> None:
    await threads.create(ALICE, "t", {"ok": True})
    for bad, error in BAD_METADATA:
        with pytest.raises(error):
            await threads.create(ALICE, "new", bad)
        with pytest.raises(error):
            await threads.update(ALICE, "t", metadata=bad)
        with pytest.raises(error):
            await threads.search(ALICE, metadata=bad, limit=10)
        with pytest.raises(error):
            await threads.count(ALICE, metadata=bad)
    assert await threads.get(ALICE, "new") is None
    t = await threads.get(ALICE, "t")
    assert t is not None and t.metadata == {"ok": True}


# Stored metadata, by thread id; then filters and the ids they must find.
FILTER_THREADS: dict[str, dict[str, Any]] = {
    "str1": {"k": "1"},
    "num1": {"k": 1},
    "float1": {"k": 1.0},
    "zero": {"k": 0},
    "true": {"k": True},
    "false": {"k": False},
    "null": {"k": None},
    "missing": {"other": 1},
    "nested": {"k": {"a": 1, "b": {"c": [1, 2, 3]}}},
    "arr": {"k": [1, "two", {"x": 1, "y": 2}, [3, 4]]},
    "empty_obj": {"k": {}},
    "empty_arr": {"k": []},
    "big": {"k": 2**63 + 1},
    "sum": {"k": 0.1 + 0.2},
    "weird": {
        'qu"ote': 1, "dot.key": "v", "$.k": "path", "[0]": 1, "": "empty",
        "ünï": "ç", "emoji🙂": "🙂", "back\\slash": "x", "k'": "apostrophe",
    },
}

FILTER_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({}, set(FILTER_THREADS)),
    ({"k": "1"}, {"str1"}),
    ({"k": 1}, {"num1", "float1"}),  # numbers compare by value...
    ({"k": 1.0}, {"num1", "float1"}),
    ({"k": True}, {"true"}),  # ...but true is not 1, nor false 0
    ({"k": False}, {"false"}),
    ({"k": 0}, {"zero"}),
    ({"k": None}, {"null"}),  # null must be there: a missing key is not null
    ({"nope": None}, set()),
    ({"k": "1 "}, set()),
    ({"k": 2**63 + 1}, {"big"}),  # exact, past 64 bits and doubles
    ({"k": 2**63}, set()),
    ({"k": 0.1 + 0.2}, {"sum"}),
    ({"k": 0.3}, set()),
    ({"k": {"a": 1, "b": {"c": [1, 2, 3]}}}, {"nested"}),  # equal objects
    ({"k": {"b": {"c": [1, 2, 3]}, "a": 1}}, {"nested"}),  # in any key order
    ({"k": {"a": 1}}, {"nested"}),  # contained objects, as jsonb @>
    ({"k": {"b": {"c": [3]}}}, {"nested"}),
    ({"k": {"a": 2}}, set()),
    ({"k": {"a": "1"}}, set()),
    ({"k": {"a": 1, "z": 1}}, set()),
    ({"k": {}}, {"nested", "empty_obj"}),
    ({"k": []}, {"arr", "empty_arr"}),
    ({"k": [1]}, {"arr"}),
    ({"k": ["two", 1, 1]}, {"arr"}),  # any order, repeats allowed
    ({"k": [{"x": 1}]}, {"arr"}),
    ({"k": [{"x": 1, "y": 3}]}, set()),
    ({"k": [[4]]}, {"arr"}),
    ({"k": [4]}, set()),  # 4 is inside a nested array, not an element
    ({"k": ["1"]}, set()),
    ({"k": 1, "other": 1}, set()),  # every key must match
    ({'qu"ote': 1}, {"weird"}),
    ({"dot.key": "v"}, {"weird"}),
    ({"dot": {"key": "v"}}, set()),  # a dot in a key is not a path
    ({"$.k": "path"}, {"weird"}),
    ({"[0]": 1}, {"weird"}),
    ({"": "empty"}, {"weird"}),
    ({"ünï": "ç", "emoji🙂": "🙂"}, {"weird"}),
    ({"back\\slash": "x"}, {"weird"}),
    ({"k'": "apostrophe"}, {"weird"}),
    ({"ÜNÏ": "ç"}, set()),  # keys match exactly, case included
]


async def metadata_filter_is_jsonb_containment(threads: ThreadRegistry) -> None:
    for thread_id, metadata in FILTER_THREADS.items():
        assert await threads.create(ALICE, thread_id, metadata) is not None
        # Bob's identical threads never show up in Alice's searches.
        assert await threads.create(BOB, f"bob-{thread_id}", metadata) is not None
    for query, expected in FILTER_CASES:
        found = await threads.search(ALICE, metadata=query, limit=100, sort_by="thread_id",
                                     sort_order="asc")
        assert ids(found) == sorted(expected), query
        assert await threads.count(ALICE, metadata=query) == len(expected), query
        for record in found:
            assert record.metadata == FILTER_THREADS[record.thread_id]


async def search_by_status_and_ids(threads: ThreadRegistry) -> None:
    for thread_id, status, team in [("a", "busy", "x"), ("b", "idle", "x"), ("c", "busy", "y"),
                                    ("d", "error", "x"), ("e", "interrupted", "y")]:
        await threads.create(ALICE, thread_id, {"team": team})
        await threads.set_status(ALICE, thread_id, status)
    await threads.create(BOB, "a", {"team": "x"})
    await threads.set_status(BOB, "a", "busy")

    def search(**filters: Any) -> Awaitable[list[ThreadRecord]]:
        return threads.search(ALICE, limit=100, sort_by="thread_id", sort_order="asc",
                              **filters)

    assert ids(await search(status="busy")) == ["a", "c"]
    assert ids(await search(status="idle")) == ["b"]
    assert ids(await search(status="busy", metadata={"team": "x"})) == ["a"]
    assert ids(await search(ids=["e", "a", "zzz"])) == ["a", "e"]
    assert ids(await search(ids=["a", "c", "d"], status="busy")) == ["a", "c"]
    assert ids(await search(ids=["a", "b", "e"], metadata={"team": "y"})) == ["e"]
    assert await search(ids=[]) == []
    assert await search(ids=["bob-only"]) == []
    assert ids(await search(ids=["a'; DROP TABLE graphgate_threads; --", "a"])) == ["a"]
    assert await threads.count(ALICE) == 5
    assert await threads.count(ALICE, status="busy") == 2
    assert await threads.count(ALICE, status="busy", metadata={"team": "y"}) == 1
    assert await threads.count(ALICE, status="error", metadata={"team": "y"}) == 0
    assert await threads.count(BOB) == 1
    assert await threads.count("nobody") == 0
    with pytest.raises(ValueError, match="status"):
        await search(status="done")
    with pytest.raises(ValueError, match="status"):
        await threads.count(ALICE, status="")
    with pytest.raises(TypeError, match="ids"):
        await search(ids=[1])


async def search_sorts_and_pages(threads: ThreadRegistry) -> None:
    # Created in the order c, a, d, b; then their statuses set (bumping updated_at) in
    # the order a, d, b, c: every sort key gives a different order.
    for thread_id in ("c", "a", "d", "b"):
        await threads.create(ALICE, thread_id, {})
        await asyncio.sleep(TICK_S)
    for thread_id, status in (("a", "interrupted"), ("d", "busy"), ("b", "idle"), ("c", "error")):
        await threads.set_status(ALICE, thread_id, status)
        await asyncio.sleep(TICK_S)
    # Two more idle threads, last of all, to tie with b on status.
    for thread_id in ("f", "e"):
        await threads.create(ALICE, thread_id, {})
        await asyncio.sleep(TICK_S)
    await threads.create(BOB, "0", {})

    expected = {
        ("thread_id", "asc"): ["a", "b", "c", "d", "e", "f"],
        ("thread_id", "desc"): ["f", "e", "d", "c", "b", "a"],
        ("created_at", "asc"): ["c", "a", "d", "b", "f", "e"],
        ("created_at", "desc"): ["e", "f", "b", "d", "a", "c"],
        ("updated_at", "asc"): ["a", "d", "b", "c", "f", "e"],
        ("updated_at", "desc"): ["e", "f", "c", "b", "d", "a"],
        # Ties (the idle b, e, f) in thread id order, whichever the direction.
        ("status", "asc"): ["d", "c", "b", "e", "f", "a"],
        ("status", "desc"): ["a", "b", "e", "f", "c", "d"],
    }
    for (sort_by, sort_order), order in expected.items():
        found = await threads.search(ALICE, limit=10, sort_by=sort_by, sort_order=sort_order)
        assert ids(found) == order, (sort_by, sort_order)
        for limit, offset in ((2, 0), (2, 2), (4, 3), (1, 5), (3, 6), (0, 0)):
            paged = await threads.search(ALICE, limit=limit, offset=offset, sort_by=sort_by,
                                         sort_order=sort_order)
            assert ids(paged) == order[offset : offset + limit]
    # The defaults, and list(), are most recently updated first.
    assert ids(await threads.search(ALICE, limit=10)) == expected["updated_at", "desc"]
    assert await threads.list(ALICE, limit=10) == await threads.search(ALICE, limit=10)
    assert ids(await threads.list(ALICE, limit=2, offset=1)) == ["f", "c"]

    for sort_by in ("metadata", "graph", "updated_at DESC", "thread_id; DROP TABLE x", ""):
        with pytest.raises(ValueError, match="sort_by"):
            await threads.search(ALICE, limit=10, sort_by=sort_by)
    for sort_order in ("ASC", "descending", ""):
        with pytest.raises(ValueError, match="sort_order"):
            await threads.search(ALICE, limit=10, sort_order=sort_order)
    with pytest.raises(ValueError, match="negative"):
        await threads.search(ALICE, limit=-1)
    with pytest.raises(ValueError, match="negative"):
        await threads.search(ALICE, limit=1, offset=-1)


async def other_owners_threads_are_invisible(threads: ThreadRegistry) -> None:
    """Every method, called by Bob on Alice's thread id, sees and changes nothing of hers."""
    await threads.create(ALICE, "hers", {"secret": "s"})
    await threads.touch(ALICE, "hers", "demo", status="busy")
    hers = await threads.get(ALICE, "hers")
    assert hers is not None

    assert await threads.get(BOB, "hers") is None
    assert await threads.update(BOB, "hers", metadata={"secret": "stolen"}) is None
    await threads.set_status(BOB, "hers", "error")
    assert await threads.search(BOB, limit=10) == []
    assert await threads.search(BOB, metadata={"secret": "s"}, limit=10) == []
    assert await threads.search(BOB, ids=["hers"], limit=10) == []
    assert await threads.search(BOB, status="busy", limit=10) == []
    assert await threads.count(BOB) == 0
    assert await threads.count(BOB, metadata={"secret": "s"}) == 0
    assert await threads.count(BOB, status="busy") == 0
    assert not await threads.delete(BOB, "hers")
    assert await threads.get(ALICE, "hers") == hers

    # Bob's own thread of that id is his: create and touch do not reach Alice's.
    bobs = await threads.create(BOB, "hers", {"mine": True})
    assert bobs is not None and bobs.metadata == {"mine": True}
    await threads.touch(BOB, "hers", "slow", status="error")
    await threads.update(BOB, "hers", metadata={"secret": "b"})
    await threads.set_status(BOB, "hers", "interrupted")
    assert await threads.get(ALICE, "hers") == hers
    assert await threads.search(ALICE, limit=10) == [hers]
    assert await threads.count(ALICE, metadata={"secret": "b"}) == 0
    assert await threads.delete(BOB, "hers")
    assert await threads.get(ALICE, "hers") == hers


async def concurrent_creates_and_updates_are_atomic(threads: ThreadRegistry) -> None:
    results = await asyncio.gather(*(threads.create(ALICE, "race", {"n": n}) for n in range(10)))
    winners = [record for record in results if record is not None]
    assert len(winners) == 1
    assert await threads.get(ALICE, "race") == winners[0]

    # Every concurrent merge lands: none reads the metadata before another's write.
    await asyncio.gather(*(threads.update(ALICE, "race", metadata={f"k{n}": n})
                           for n in range(20)))
    record = await threads.get(ALICE, "race")
    assert record is not None
    assert record.metadata == {"n": winners[0].metadata["n"], **{f"k{n}": n for n in range(20)}}


SCENARIOS: list[Scenario] = [
    create_then_get,
    touch_keeps_metadata_and_sets_status,
    update_merges_top_level_keys,
    set_status_bumps_updated_at,
    metadata_round_trips_exactly,
    unstorable_metadata_is_refused_everywhere,
    metadata_filter_is_jsonb_containment,
    search_by_status_and_ids,
    search_sorts_and_pages,
    other_owners_threads_are_invisible,
    concurrent_creates_and_updates_are_atomic,
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


# --- Store-specific behaviour --------------------------------------------------------


def test_timestamp_ties_sort_by_thread_id(database_url: str) -> None:
    """Equal created_at or updated_at: thread id order, in both directions."""
    async def main() -> None:
        async with threads_for(database_url) as threads:
            for thread_id in ("b", "a", "B", "_", "-", "c"):
                await threads.create(ALICE, thread_id, {})
            execute_raw(database_url,
                        "UPDATE graphgate_threads SET"
                        " created_at = (SELECT min(created_at) FROM graphgate_threads),"
                        " updated_at = (SELECT min(updated_at) FROM graphgate_threads)")
            by_id = sorted(["b", "a", "B", "_", "-", "c"])
            for sort_by in ("created_at", "updated_at", "status"):
                for sort_order in ("asc", "desc"):
                    found = await threads.search(ALICE, limit=10, sort_by=sort_by,
                                                 sort_order=sort_order)
                    assert ids(found) == by_id

    run(main())


def test_memory_ties_and_a_clock_stepping_back() -> None:
    """With an injected clock: ties sort by id, and no update moves updated_at back."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    now = [t0]
    threads = MemoryThreads(clock=lambda: now[0])

    async def main() -> None:
        for thread_id in ("b", "a", "c"):
            await threads.create(ALICE, thread_id, {})
        for sort_by in ("created_at", "updated_at"):
            for sort_order in ("asc", "desc"):
                found = await threads.search(ALICE, limit=10, sort_by=sort_by,
                                             sort_order=sort_order)
                assert ids(found) == ["a", "b", "c"]
        now[0] = t0 - timedelta(minutes=5)
        await threads.update(ALICE, "a", metadata={"x": 1})
        await threads.set_status(ALICE, "b", "busy")
        await threads.touch(ALICE, "c", "demo", status="error")
        for thread_id in ("a", "b", "c"):
            record = await threads.get(ALICE, thread_id)
            assert record is not None and record.updated_at == t0

    run(main())


def test_sqlite_clock_stepping_back_keeps_updated_at(tmp_path: Path) -> None:
    """A worker whose wall clock is behind does not move a thread back in the listing."""
    now = [1_700_000_000.0]

    async def main() -> None:
        async with aiosqlite.connect(tmp_path / "clock.sqlite", isolation_level=None) as conn:
            threads = SqliteThreads(conn, clock=lambda: now[0])
            await threads.setup()
            created = await threads.create(ALICE, "t", {})
            assert created is not None
            now[0] -= 300
            updated = await threads.update(ALICE, "t", metadata={"x": 1})
            await threads.set_status(ALICE, "t", "busy")
            record = await threads.get(ALICE, "t")
            assert updated is not None and record is not None
            assert updated.updated_at == record.updated_at == created.created_at

    run(main())


def test_records_survive_reopening(database_url: str) -> None:
    """Metadata, status and a graphless thread read back the same after a restart."""
    async def main() -> None:
        async with threads_for(database_url) as threads:
            await threads.create(ALICE, "graphless", ROUND_TRIP)
            await threads.create(ALICE, "ran", {"a": 1})
            await threads.touch(ALICE, "ran", "demo", status="interrupted")
            before = await threads.search(ALICE, limit=10)
        async with threads_for(database_url) as threads:
            assert await threads.search(ALICE, limit=10) == before
            graphless = await threads.get(ALICE, "graphless")
            assert graphless is not None
            assert (graphless.graph, graphless.metadata) == (None, ROUND_TRIP)

    run(main())


def test_concurrent_writers_on_one_store(database_url: str) -> None:
    """Two processes' worth of connections merging into one thread lose no update."""
    async def main() -> None:
        async with threads_for(database_url) as one, threads_for(database_url) as two:
            await one.create(ALICE, "t", {})
            await asyncio.gather(*(
                (one if n % 2 else two).update(ALICE, "t", metadata={f"k{n}": n})
                for n in range(20)))
            record = await two.get(ALICE, "t")
            assert record is not None and record.metadata == {f"k{n}": n for n in range(20)}
            # And one id created from both at once is created once.
            results = await asyncio.gather(*(
                (one if n % 2 else two).create(ALICE, "race", {"n": n}) for n in range(10)))
            assert sum(record is not None for record in results) == 1

    run(main())


# The tables as the previous release made them.
OLD_SQLITE_SCHEMA = (
    "CREATE TABLE graphgate_threads (owner TEXT NOT NULL, thread_id TEXT NOT NULL,"
    " graph TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
    " PRIMARY KEY (owner, thread_id))",
    "CREATE INDEX graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
    "INSERT INTO graphgate_threads VALUES ('tenantA/alice', 'old', 'demo',"
    " 1700000000.0, 1700000100.0)",
)
OLD_POSTGRES_SCHEMA = (
    'CREATE TABLE graphgate_threads (owner TEXT COLLATE "C" NOT NULL,'
    ' thread_id TEXT COLLATE "C" NOT NULL, graph TEXT NOT NULL,'
    " created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,"
    " PRIMARY KEY (owner, thread_id))",
    "CREATE INDEX graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
    "INSERT INTO graphgate_threads VALUES ('tenantA/alice', 'old', 'demo',"
    " to_timestamp(1700000000), to_timestamp(1700000100))",
)
# What the previous release's touch() runs, to check that it keeps working mid-upgrade.
OLD_SQLITE_TOUCH = (
    "INSERT INTO graphgate_threads (owner, thread_id, graph, created_at, updated_at)"
    " VALUES ('tenantA/alice', 'by-old-code', 'demo', 1700000200.0, 1700000200.0)")
OLD_POSTGRES_TOUCH = (
    "INSERT INTO graphgate_threads (owner, thread_id, graph, created_at, updated_at)"
    " VALUES ('tenantA/alice', 'by-old-code', 'demo', now(), now())")


def test_migrates_a_table_from_the_previous_release(database_url: str) -> None:
    """Old rows read back with metadata {} and status idle; every new method works on them."""
    sqlite = database_url.startswith("sqlite:///")
    for statement in OLD_SQLITE_SCHEMA if sqlite else OLD_POSTGRES_SCHEMA:
        execute_raw(database_url, statement)

    async def main() -> None:
        async with threads_for(database_url) as threads:
            old = await threads.get(ALICE, "old")
            assert old is not None
            assert (old.graph, old.metadata, old.status) == ("demo", {}, "idle")
            assert old.created_at == datetime.fromtimestamp(1_700_000_000, UTC)
            assert old.updated_at == datetime.fromtimestamp(1_700_000_100, UTC)

            execute_raw(database_url, OLD_SQLITE_TOUCH if sqlite else OLD_POSTGRES_TOUCH)
            by_old = await threads.get(ALICE, "by-old-code")
            assert by_old is not None and (by_old.metadata, by_old.status) == ({}, "idle")

            created = await threads.create(ALICE, "new", {"a": {"b": None}})
            assert created is not None and created.graph is None  # graph is now optional
            updated = await threads.update(ALICE, "old", metadata={"x": 1})
            assert updated is not None and updated.metadata == {"x": 1}
            await threads.set_status(ALICE, "old", "busy")
            assert ids(await threads.search(ALICE, metadata={"x": 1}, status="busy",
                                            limit=10)) == ["old"]
            assert await threads.count(ALICE) == 3
        # Migrating again, as every start does, changes nothing.
        async with threads_for(database_url) as threads:
            again = await threads.get(ALICE, "new")
            assert again == created
            assert await threads.count(ALICE) == 3

    run(main())


def test_postgres_migration_shape(postgres: Any) -> None:
    """After migrating an old table: nullable graph, defaults, and the GIN index."""
    url = postgres.create_database()
    for statement in OLD_POSTGRES_SCHEMA:
        execute_raw(url, statement)

    async def main() -> None:
        async with threads_for(url):
            pass

    run(main())
    with psycopg.connect(url) as conn:
        columns = dict(conn.execute(
            "SELECT column_name, is_nullable || ' ' || coalesce(column_default, '')"
            " FROM information_schema.columns WHERE table_name = 'graphgate_threads'"
        ).fetchall())
        indexes = dict(conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'graphgate_threads'"
        ).fetchall())
    assert columns["graph"] == "YES "
    assert columns["metadata"] == "NO '{}'::jsonb"
    assert columns["status"] == "NO 'idle'::text"
    assert "gin (metadata jsonb_path_ops)" in indexes["graphgate_threads_metadata"]


def test_sqlite_setup_migrates_once_with_workers_racing(tmp_path: Path) -> None:
    """Workers starting together on an old file: one adds the columns, none fails."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in OLD_SQLITE_SCHEMA:
            conn.execute(statement)
    conn.close()

    async def main() -> None:
        conns = [await aiosqlite.connect(path, isolation_level=None) for _ in range(4)]
        try:
            registries = [SqliteThreads(conn) for conn in conns]
            await asyncio.gather(*(registry.setup() for registry in registries))
            for registry in registries:
                old = await registry.get(ALICE, "old")
                assert old is not None and (old.metadata, old.status) == ({}, "idle")
        finally:
            for conn in conns:
                await conn.close()

    run(main())
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(graphgate_threads)")]
    conn.close()
    assert columns == ["owner", "thread_id", "graph", "created_at", "updated_at", "metadata",
                       "status"]


def test_sqlite_stores_no_graph_as_empty_text(tmp_path: Path) -> None:
    """graph stays NOT NULL in SQLite (old files have it so): '' stands for no run yet."""
    async def main() -> None:
        async with aiosqlite.connect(tmp_path / "g.sqlite", isolation_level=None) as conn:
            threads = SqliteThreads(conn)
            await threads.setup()
            await threads.create(ALICE, "t", {})
            rows = await conn.execute_fetchall("SELECT graph FROM graphgate_threads")
            assert list(rows) == [("",)]
            await threads.touch(ALICE, "t", "demo")
            record = await threads.get(ALICE, "t")
            assert record is not None and record.graph == "demo"

    run(main())
