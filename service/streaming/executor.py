"""The run executor: runs one graph turn on one thread and reports it as events.

It knows nothing of HTTP or SSE. An API family asks it to `start` a run (which takes
the thread's lease, or raises ThreadBusy before any response is sent), then drives
`Run.produce` with an `emit` callback and formats the events its own way.

Every run emits `metadata` first, then one event per graph output named by its stream
mode, then at most one `error`, then `end`. A cancelled run (client gone) emits nothing
more: there is no one to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.pregel import Pregel

from service.persistence.checkpointer import STORAGE_ERRORS
from service.persistence.leases import ThreadLeases
from service.settings import RunSettings, StreamingSettings

StreamMode = Literal["values", "updates", "messages", "custom", "debug"]
STREAM_MODES: tuple[StreamMode, ...] = ("values", "updates", "messages", "custom", "debug")

log = structlog.get_logger("graphgate.run")

# How long a cancelled run may take to unwind (cancel its nodes, flush its writes).
CANCEL_GRACE_S = 10.0


class ThreadBusy(Exception):
    """Another run holds this thread's lease."""


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One thing that happened in a run: `metadata`, a stream mode's output, `error`, `end`."""

    event: str
    data: Any


@dataclass(frozen=True, slots=True)
class RunError:
    """What a client may learn about a failure: a stable code and a fixed message."""

    code: str
    message: str


# Client-safe descriptions of failures. Never the exception text: it can hold SQL,
# hostnames, provider error bodies or secrets. The full exception goes to the log.
RECURSION = RunError("recursion_limit", "The run exceeded its step limit.")
STORAGE = RunError("storage_unavailable", "The conversation store is unavailable; try again.")
GRAPH = RunError("graph_error", "The graph failed while running.")
TIMEOUT = RunError("run_timeout", "The run exceeded the maximum stream duration.")


def classify(exc: BaseException) -> RunError:
    if isinstance(exc, GraphRecursionError):
        return RECURSION
    if isinstance(exc, STORAGE_ERRORS):
        return STORAGE
    return GRAPH


@dataclass(frozen=True)
class RunRequest:
    graph_name: str
    graph: Pregel[Any, Any, Any, Any]
    thread_id: str
    input: Any
    stream_modes: Sequence[StreamMode]
    request_id: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))


# Synchronous and non-blocking by contract; see service/streaming/sse.py for why.
Emit = Callable[[RunEvent], None]


class Run:
    """A started run holding its thread's lease until `release`."""

    def __init__(self, executor: RunExecutor, request: RunRequest) -> None:
        self._executor = executor
        self.request = request
        self.run_id = request.run_id
        self._released = False
        self.outcome: Literal["pending", "success", "error", "timeout"] = "pending"

    def config(self) -> RunnableConfig:
        req = self.request
        # Built entirely server-side: clients never supply configurable keys.
        return {
            "configurable": {"thread_id": req.thread_id},
            "recursion_limit": self._executor.run_settings.recursion_limit,
            "run_id": uuid.UUID(req.run_id),
            "metadata": {"graph_id": req.graph_name, "run_id": req.run_id},
        }

    async def produce(self, emit: Emit) -> None:
        """Run the graph, emitting events; returns normally unless cancelled."""
        req = self.request
        bound = log.bind(run_id=self.run_id, thread_id=req.thread_id, graph=req.graph_name,
                         request_id=req.request_id)
        emit(RunEvent("metadata", {"run_id": self.run_id, "thread_id": req.thread_id,
                                         "graph": req.graph_name}))
        error: RunError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_lease, bound)
            with anyio.move_on_after(self._executor.streaming.max_duration_s) as deadline:
                try:
                    await self._stream(emit)
                except Exception as exc:
                    error = classify(exc)
                    bound.error("run_failed", error_code=error.code, exc_type=type(exc).__name__,
                                exc_info=exc)
            if deadline.cancelled_caught:
                error = TIMEOUT
                bound.warning("run_timed_out",
                              max_duration_s=self._executor.streaming.max_duration_s)
            tg.cancel_scope.cancel()
        self.outcome = "success" if error is None else (
            "timeout" if error is TIMEOUT else "error")
        if error is not None:
            emit(RunEvent("error", error))
        emit(RunEvent("end", {"run_id": self.run_id, "status": self.outcome}))

    async def _stream(self, emit: Emit) -> None:
        # The graph runs in its own asyncio task. LangGraph unwinds a cancelled run by
        # awaiting a clean-up task; anyio re-cancels every await inside a cancelled scope,
        # which would abandon that clean-up and leave the running node going forever. So
        # the graph's task is cancelled exactly once, asyncio-style, and we wait for its
        # clean-up under a shield.
        task = asyncio.ensure_future(self._consume(emit))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE_S):
                await asyncio.wait([task])
            raise

    async def _consume(self, emit: Emit) -> None:
        req = self.request
        stream: AsyncGenerator[Any, None] = req.graph.astream(  # type: ignore[assignment]
            req.input,
            self.config(),
            stream_mode=list(req.stream_modes),
            durability=self._executor.run_settings.durability,
        )  # an async generator, though typed as an iterator
        async with contextlib.aclosing(stream):
            async for mode, chunk in stream:
                emit(RunEvent(mode, chunk))

    async def _keep_lease(self, bound: Any) -> None:
        ttl = self._executor.run_settings.lease_ttl_s
        while True:
            await anyio.sleep(ttl / 3)
            try:
                held = await self._executor.leases.renew(self.request.thread_id, self.run_id, ttl)
            except Exception as exc:
                bound.warning("lease_renew_failed", exc_type=type(exc).__name__)
                continue
            if not held:
                bound.warning("lease_lost")

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            await self._executor.leases.release(self.request.thread_id, self.run_id)
        except Exception as exc:
            # The lease will expire on its own after lease_ttl_s.
            log.warning("lease_release_failed", run_id=self.run_id, exc_type=type(exc).__name__)


class RunExecutor:
    """Starts runs; shared by every API family."""

    def __init__(
        self, leases: ThreadLeases, run_settings: RunSettings, streaming: StreamingSettings
    ) -> None:
        self.leases = leases
        self.run_settings = run_settings
        self.streaming = streaming

    async def start(self, request: RunRequest) -> Run:
        """Take the thread's lease (or raise ThreadBusy) and return the run, not yet running."""
        acquired = await self.leases.acquire(
            request.thread_id, request.run_id, self.run_settings.lease_ttl_s
        )
        if not acquired:
            raise ThreadBusy(request.thread_id)
        return Run(self, request)

    @contextlib.asynccontextmanager
    async def lock_thread(self, thread_id: str) -> Any:
        """Hold a thread's lease for a non-run operation (e.g. delete), or raise ThreadBusy."""
        holder = f"op-{uuid.uuid4()}"
        if not await self.leases.acquire(thread_id, holder, self.run_settings.lease_ttl_s):
            raise ThreadBusy(thread_id)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.leases.release(thread_id, holder)
