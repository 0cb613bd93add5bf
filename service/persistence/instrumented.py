"""Timing for checkpointer calls and a reading of the Postgres pool, for the metrics;
and writes that finish even when the run that made them is cancelled.

Persistence does not import observability: `TimedSaver` reports to any `StoreObserver`
(the app connects one that feeds the checkpointer histogram), and `pool_stats` turns
psycopg_pool's stats into the four numbers the pool gauge shows.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Protocol, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    V,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The `operation` values TimedSaver reports: a small fixed set, safe as a metric label.
OPERATIONS = (
    "get", "list", "put", "put_writes", "delete_thread",
    "delete_for_runs", "copy_thread", "prune", "delta_history",
)


async def _to_completion(write: Awaitable[T]) -> T:
    """Run a write to its end even if the caller is cancelled (a client hung up, a run
    was cancelled). The savers write and then commit in separate steps; cut between
    them, SQLite's saver would keep its transaction, and the file's write lock, open
    until its next write, and every other writer would time out meanwhile. Finishing
    also keeps the step the write completes, as a committed step should be kept."""
    return await asyncio.shield(asyncio.ensure_future(write))


class StoreObserver(Protocol):
    def observe(self, operation: str, seconds: float) -> None:
        """One checkpointer call took `seconds`; called whether it succeeded or raised."""


class TimedSaver(BaseCheckpointSaver[V]):
    """A checkpointer that times another one's async calls and otherwise is it.

    Every method LangGraph uses is delegated to `inner` explicitly (the base class's
    defaults would silently run different code); the async storage calls are timed and
    reported to `observer`, exceptions included. Sync calls are delegated untimed: the
    service only runs graphs asynchronously.
    """

    def __init__(
        self,
        inner: BaseCheckpointSaver[V],
        observer: StoreObserver,
        *,
        clock: Callable[[], float] = time.perf_counter,
        finish_writes: bool = True,
    ) -> None:
        # No super().__init__(): it would assign a serializer, and `serde` is the inner's.
        self.inner: BaseCheckpointSaver[V] = inner
        self._observer = observer
        self._clock = clock
        self._observer_failed = False
        # Writes run to completion in a task of their own (see _to_completion); a saver
        # whose writes never await (the in-memory one) does not need the task.
        self._finish_writes = finish_writes

    def _write(self, write: Awaitable[T]) -> Awaitable[T]:
        return _to_completion(write) if self._finish_writes else write

    def _report(self, operation: str, started: float) -> None:
        try:
            self._observer.observe(operation, self._clock() - started)
        except Exception:
            # A metrics bug must never fail a checkpoint write; say so once.
            if not self._observer_failed:
                self._observer_failed = True
                logger.exception("checkpointer observer failed; timings may be missing")

    # Attributes

    @property
    def serde(self) -> SerializerProtocol:
        return self.inner.serde

    @serde.setter
    def serde(self, value: SerializerProtocol) -> None:
        self.inner.serde = value

    @property
    def config_specs(self) -> builtins.list[Any]:
        return self.inner.config_specs

    def get_next_version(self, current: V | None, channel: None) -> V:
        return self.inner.get_next_version(current, channel)

    def with_allowlist(
        self, extra_allowlist: Collection[tuple[str, ...]]
    ) -> BaseCheckpointSaver[V]:
        # The base class would shallow-copy this wrapper and set `serde` on the copy,
        # which would reach through to the shared inner saver. Wrap the inner's clone.
        clone = self.inner.with_allowlist(extra_allowlist)
        if clone is self.inner:
            return self
        return TimedSaver(clone, self._observer, clock=self._clock,
                          finish_writes=self._finish_writes)

    # Async, timed

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        started = self._clock()
        try:
            return await self.inner.aget_tuple(config)
        finally:
            self._report("get", started)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        # Timed from the first item asked for until the listing is exhausted, fails, or
        # the consumer stops (closes this generator).
        started = self._clock()
        items = self.inner.alist(config, filter=filter, before=before, limit=limit)
        try:
            async for item in items:
                yield item
        finally:
            try:
                # Release the inner listing (a Postgres cursor holds a pool connection)
                # now, not whenever it is garbage-collected.
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self._report("list", started)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        started = self._clock()
        try:
            return await self._write(self.inner.aput(config, checkpoint, metadata, new_versions))
        finally:
            self._report("put", started)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        started = self._clock()
        try:
            await self._write(self.inner.aput_writes(config, writes, task_id, task_path))
        finally:
            self._report("put_writes", started)

    async def adelete_thread(self, thread_id: str) -> None:
        started = self._clock()
        try:
            await self._write(self.inner.adelete_thread(thread_id))
        finally:
            self._report("delete_thread", started)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        started = self._clock()
        try:
            await self._write(self.inner.adelete_for_runs(run_ids))
        finally:
            self._report("delete_for_runs", started)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        started = self._clock()
        try:
            await self._write(self.inner.acopy_thread(source_thread_id, target_thread_id))
        finally:
            self._report("copy_thread", started)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        started = self._clock()
        try:
            await self._write(self.inner.aprune(thread_ids, strategy=strategy))
        finally:
            self._report("prune", started)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        started = self._clock()
        try:
            return await self.inner.aget_delta_channel_history(config=config, channels=channels)
        finally:
            self._report("delta_history", started)

    # `aget` is the base class's: it calls `aget_tuple`, so it is timed as "get".

    # Sync, delegated untimed (`get` is the base class's, over `get_tuple`)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.inner.get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self.inner.list(config, filter=filter, before=before, limit=limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.inner.put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.inner.put_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self.inner.delete_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.inner.delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.inner.copy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.inner.prune(thread_ids, strategy=strategy)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self.inner.get_delta_channel_history(config=config, channels=channels)


class PoolWithStats(Protocol):
    def get_stats(self) -> dict[str, int]: ...


def pool_stats(pool: PoolWithStats) -> dict[str, int]:
    """The pool's connections now: size, in_use, idle, and requests waiting for one.

    Uses `get_stats` (a cheap read of counters the pool keeps), never `pop_stats`, which
    would reset the pool's cumulative counters for anyone else reading them. `size`
    counts connections being opened too, so `in_use` includes those briefly.
    """
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    idle = stats.get("pool_available", 0)
    return {
        "size": size,
        "in_use": max(size - idle, 0),
        "idle": idle,
        "waiting": stats.get("requests_waiting", 0),
    }
