"""Checkpointer timing (TimedSaver) and the Postgres pool reading (pool_stats), on real stores."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    empty_checkpoint,
)
from langgraph.checkpoint.memory import InMemorySaver
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.graphs.loader import load_graphs
from service.persistence import TimedSaver, open_persistence, pool_stats
from tests.conftest import make_settings
from tests.support.postgres import PostgresServer

T = TypeVar("T")
MEMORY_URL = "memory:"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def observe(self, operation: str, seconds: float) -> None:
        self.calls.append((operation, seconds))

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def count(self, operation: str) -> int:
        return self.ops().count(operation)


def ticking_clock() -> Callable[[], float]:
    """0, 1, 2, …: every timed call lasts exactly one tick."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


def thread(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


async def say(graph: Any, text: str, thread_id: str) -> str:
    await graph.ainvoke({"messages": [HumanMessage(text)]}, thread(thread_id))
    state = await graph.aget_state(thread(thread_id))
    return str(state.values["messages"][-1].content)


# A real graph through a TimedSaver, on every store


async def graph_round_trip(url: str) -> None:
    recorder = Recorder()
    settings = make_settings(url)
    async with open_persistence(settings, observer=recorder) as persistence:
        saver = persistence.checkpointer
        assert isinstance(saver, TimedSaver)
        graph = (await load_graphs(settings, saver)).graphs["demo"]

        assert "I have seen 1 message in" in await say(graph, "hello", "t-1")
        ops = set(recorder.ops())
        assert {"get", "put", "put_writes"} <= ops, ops
        assert all(seconds >= 0 for _, seconds in recorder.calls)

        # Turn two reads turn one back through the wrapper.
        assert "I have seen 3 messages" in await say(graph, "again", "t-1")

        # History goes through alist: one checkpoint per timed put, none lost or extra.
        puts = recorder.count("put")
        before = recorder.count("list")
        history = [snapshot async for snapshot in graph.aget_state_history(thread("t-1"))]
        assert recorder.count("list") == before + 1
        assert len(history) == puts
        assert history[0].values["messages"][-1].content.startswith("I have seen 3 messages")

        # The API reads and deletes through the checkpointer directly.
        found = await saver.aget_tuple(thread("t-1"))
        assert found is not None
        await saver.adelete_thread("t-1")
        assert recorder.ops()[-1] == "delete_thread"
        assert await saver.aget_tuple(thread("t-1")) is None
        assert (await graph.aget_state(thread("t-1"))).values == {}
        # The deleted thread starts over.
        assert "I have seen 1 message in" in await say(graph, "hello", "t-1")


def test_graph_runs_through_a_timed_saver(database_url: str) -> None:
    """SQLite and Postgres: every call LangGraph makes is timed and state round-trips."""
    run(graph_round_trip(database_url))


def test_graph_runs_through_a_timed_saver_in_memory() -> None:
    run(graph_round_trip(MEMORY_URL))


async def plain_persistence(url: str) -> None:
    async with open_persistence(make_settings(url)) as persistence:
        assert not isinstance(persistence.checkpointer, TimedSaver)
        assert isinstance(persistence.checkpointer, BaseCheckpointSaver)
        if persistence.kind == "postgres":
            assert persistence.pool_stats is not None
        else:
            assert persistence.pool_stats is None


def test_no_observer_means_the_plain_saver(database_url: str) -> None:
    run(plain_persistence(database_url))


def test_no_observer_means_the_plain_saver_in_memory() -> None:
    run(plain_persistence(MEMORY_URL))


# The wrapper itself, on an in-memory saver


class Boom(Exception):
    pass


class BrokenSaver(InMemorySaver):
    """Stores nothing: every write fails."""

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions
                   ) -> RunnableConfig:
        raise Boom("put")

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        raise Boom("put_writes")

    async def adelete_thread(self, thread_id: str) -> None:
        raise Boom("delete_thread")



class ListingFails(InMemorySaver):
    """A listing fails after its first item."""

    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None, before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        async for item in super().alist(config, filter=filter, before=before, limit=limit):
            yield item
            raise Boom("list")


def seeded_saver(kind: type[InMemorySaver] = InMemorySaver) -> InMemorySaver:
    """An in-memory saver holding a few checkpoints of thread t-1."""
    saver = kind()

    async def seed() -> None:
        graph = (await load_graphs(make_settings(MEMORY_URL), saver)).graphs["demo"]
        await graph.ainvoke({"messages": [HumanMessage("hi")]}, thread("t-1"))

    run(seed())
    return saver


def test_exceptions_propagate_unchanged_and_are_timed() -> None:
    inner = BrokenSaver()
    recorder = Recorder()
    saver: TimedSaver[Any] = TimedSaver(inner, recorder, clock=ticking_clock())

    async def scenario() -> None:
        with pytest.raises(Boom, match=r"^put$"):
            await saver.aput(thread("t"), empty_checkpoint(), {}, {})
        with pytest.raises(Boom, match=r"^put_writes$"):
            await saver.aput_writes(thread("t"), [("a", 1)], "task")
        with pytest.raises(Boom, match=r"^delete_thread$"):
            await saver.adelete_thread("t")

    run(scenario())
    assert recorder.calls == [("put", 1.0), ("put_writes", 1.0), ("delete_thread", 1.0)]


def test_a_listing_is_timed_to_its_end_failure_or_abandonment() -> None:
    seeded = seeded_saver()
    recorder = Recorder()
    saver: TimedSaver[Any] = TimedSaver(seeded, recorder, clock=ticking_clock())
    broken: TimedSaver[Any] = TimedSaver(
        seeded_saver(ListingFails), recorder, clock=ticking_clock())

    async def scenario() -> None:
        # To exhaustion.
        items = [item async for item in saver.alist(thread("t-1"))]
        assert len(items) >= 2
        # The consumer stops after one: closing the wrapper closes the inner listing.
        listing = saver.alist(thread("t-1"))
        assert await anext(listing) == items[0]
        assert recorder.count("list") == 1
        await listing.aclose()  # type: ignore[attr-defined]
        assert recorder.count("list") == 2
        # The inner listing fails part-way.
        with pytest.raises(Boom, match=r"^list$"):
            async for _ in broken.alist(thread("t-1")):
                pass
        assert recorder.count("list") == 3

    run(scenario())
    assert all(seconds >= 1 for _, seconds in recorder.calls)


def test_a_failing_observer_never_fails_the_store() -> None:
    class Broken:
        def observe(self, operation: str, seconds: float) -> None:
            raise RuntimeError("metrics are down")

    saver: TimedSaver[Any] = TimedSaver(seeded_saver(), Broken())
    found = run(saver.aget_tuple(thread("t-1")))
    assert found is not None


def test_everything_langgraph_calls_is_delegated() -> None:
    """Each public BaseCheckpointSaver member is the inner saver's, not the base default.

    A new langgraph method would otherwise silently run the base class's version on the
    wrapper; `get`/`aget` are the only ones left to the base (they call get_tuple and
    aget_tuple, which are delegated).
    """
    inherited = {"get", "aget"}
    public = {name for name in dir(BaseCheckpointSaver) if not name.startswith("_")}
    missing = {name for name in public - inherited if name not in vars(TimedSaver)}
    assert not missing


def test_attributes_are_the_inner_savers() -> None:
    inner = InMemorySaver()
    saver: TimedSaver[Any] = TimedSaver(inner, Recorder())
    assert saver.serde is inner.serde
    assert saver.config_specs == inner.config_specs
    # The inner's string versions (with a random tail), not the base class's integers.
    version = saver.get_next_version(None, None)
    assert isinstance(version, str)
    assert version.split(".")[0] == inner.get_next_version(None, None).split(".")[0]
    # The sync API works too (untimed), on the inner's data.
    seeded = seeded_saver()
    wrapped: TimedSaver[Any] = TimedSaver(seeded, Recorder())
    assert wrapped.get_tuple(thread("t-1")) == seeded.get_tuple(thread("t-1"))
    assert list(wrapped.list(thread("t-1"))) == list(seeded.list(thread("t-1")))


def test_with_allowlist_wraps_the_inner_clone() -> None:
    inner = InMemorySaver()
    recorder = Recorder()
    saver: TimedSaver[Any] = TimedSaver(inner, recorder)
    original_serde = inner.serde
    clone = saver.with_allowlist({("tests.persistence.test_instrumented", "Boom")})
    assert inner.serde is original_serde  # the shared inner saver is untouched
    expected = inner.with_allowlist({("tests.persistence.test_instrumented", "Boom")})
    if expected is inner:
        assert clone is saver
    else:
        assert isinstance(clone, TimedSaver)
        assert clone.inner is not inner
        assert clone.serde is not original_serde
        run(clone.aget_tuple(thread("x")))
        assert recorder.ops() == ["get"]


# Pool stats, on a real Postgres pool


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    return postgres.create_database()


async def open_pool(url: str, *, min_size: int, max_size: int) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=min_size, max_size=max_size, timeout=5, open=False)
    await pool.open(wait=True, timeout=10)
    return pool


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_pool_stats_count_connections_in_use(postgres_url: str) -> None:
    async def scenario() -> None:
        pool = await open_pool(postgres_url, min_size=2, max_size=4)
        try:
            idle = pool_stats(pool)
            assert set(idle) == {"size", "in_use", "idle", "waiting"}
            assert all(type(value) is int for value in idle.values())
            assert idle == {"size": 2, "in_use": 0, "idle": 2, "waiting": 0}
            async with pool.connection(), pool.connection():
                held = pool_stats(pool)
                assert held["in_use"] == 2
                assert held["idle"] == held["size"] - 2
                assert held["waiting"] == 0
            assert pool_stats(pool)["in_use"] == 0
        finally:
            await pool.close()

    run(scenario())


def test_pool_stats_count_requests_waiting(postgres_url: str) -> None:
    async def scenario() -> None:
        pool = await open_pool(postgres_url, min_size=1, max_size=1)
        try:
            async def wait_for_one() -> bool:
                try:
                    async with pool.connection(timeout=5):
                        return True
                except PoolTimeout:
                    return False

            async with pool.connection():
                waiters = [asyncio.create_task(wait_for_one()) for _ in range(2)]
                await eventually(lambda: pool_stats(pool)["waiting"] == 2)
                assert pool_stats(pool) == {"size": 1, "in_use": 1, "idle": 0, "waiting": 2}
            # Released: both waiters get the connection in turn.
            assert await asyncio.gather(*waiters) == [True, True]
            assert pool_stats(pool) == {"size": 1, "in_use": 0, "idle": 1, "waiting": 0}
            # get_stats, not pop_stats: the pool's own counters are left alone.
            assert pool.get_stats()["requests_queued"] == 2
        finally:
            await pool.close()

    run(scenario())


def test_persistence_reports_its_pool(postgres_url: str) -> None:
    """open_persistence's pool_stats reads the checkpointer's pool: a paused listing holds
    a connection, and closing the timed listing gives it back at once."""

    async def scenario() -> None:
        recorder = Recorder()
        settings = make_settings(postgres_url)
        async with open_persistence(settings, observer=recorder) as persistence:
            assert persistence.pool_stats is not None
            graph = (await load_graphs(settings, persistence.checkpointer)).graphs["demo"]
            await say(graph, "hello", "t-1")
            await eventually(lambda: persistence.pool_stats is not None
                             and persistence.pool_stats()["in_use"] == 0)
            quiet = persistence.pool_stats()
            assert quiet["size"] >= settings.postgres.pool_min_size
            assert quiet["waiting"] == 0

            listing = persistence.checkpointer.alist(thread("t-1"))
            await anext(listing)
            assert persistence.pool_stats()["in_use"] == 1
            await listing.aclose()  # type: ignore[attr-defined]
            assert persistence.pool_stats()["in_use"] == 0
            assert recorder.ops()[-1] == "list"

    run(scenario())


def test_pool_stats_signature_takes_any_pool() -> None:
    """Anything with psycopg_pool's get_stats() will do (sync pools included)."""

    class FakePool:
        def get_stats(self) -> dict[str, int]:
            return {"pool_min": 1, "pool_max": 4, "pool_size": 3, "pool_available": 1,
                    "requests_waiting": 5, "requests_num": 99}

    assert pool_stats(FakePool()) == {"size": 3, "in_use": 2, "idle": 1, "waiting": 5}


def test_a_cancelled_write_still_lands_and_frees_the_store(database_url: str) -> None:
    """A run cancelled while its checkpoint is being written (a client hanging up) must
    not leave the write half done: on SQLite that would hold the file's write lock, and
    every other writer would time out until the saver's next write."""

    async def scenario() -> None:
        settings = make_settings(database_url)
        async with open_persistence(settings, observer=Recorder()) as persistence:
            saver = persistence.checkpointer
            config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
            checkpoint = empty_checkpoint()
            write = asyncio.ensure_future(saver.aput(config, checkpoint, {}, {}))
            await asyncio.sleep(0)  # the write has started
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            # Another writer gets the store at once, and the cancelled write is there.
            async with asyncio.timeout(3):
                assert await persistence.leases.acquire("other", "run-1", 30)
                # The store is polled: the write finishes in a task of its own.
                while (found := await saver.aget_tuple(config)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert found.checkpoint["id"] == checkpoint["id"]

    run(scenario())


class TaskSpy(InMemorySaver):
    """Notes which task each write runs in."""

    def __init__(self) -> None:
        super().__init__()
        self.write_tasks: list[asyncio.Task[Any] | None] = []

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions,
                   ) -> RunnableConfig:
        self.write_tasks.append(asyncio.current_task())
        return await super().aput(config, checkpoint, metadata, new_versions)


@pytest.mark.parametrize("finish_writes", [True, False])
def test_writes_get_a_task_of_their_own_only_when_they_can_be_cut(finish_writes: bool) -> None:
    """A saver whose writes await I/O (SQLite, Postgres) has each write run to completion
    in a task of its own; the in-memory saver, whose writes never await, writes in the
    caller's task (a task per write would be pure overhead)."""
    inner = TaskSpy()
    saver: TimedSaver[Any] = TimedSaver(inner, Recorder(), finish_writes=finish_writes)
    config: RunnableConfig = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    async def scenario() -> asyncio.Task[Any] | None:
        await saver.aput(config, empty_checkpoint(), {}, {})
        return asyncio.current_task()

    caller = run(scenario())
    assert len(inner.write_tasks) == 1
    assert (inner.write_tasks[0] is caller) is not finish_writes


def test_the_store_picks_whether_writes_are_finished(database_url: str) -> None:
    """open_persistence wraps the in-memory saver without, and the others with, the task."""
    async def finishes(url: str) -> bool:
        async with open_persistence(make_settings(url), observer=Recorder()) as persistence:
            saver = persistence.checkpointer
            assert isinstance(saver, TimedSaver)
            return saver._finish_writes

    assert run(finishes("memory:")) is False
    assert run(finishes(database_url)) is True
