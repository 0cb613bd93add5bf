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
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.pregel import Pregel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span

from service.observability.tracing import run_span, set_run_outcome
from service.persistence.checkpointer import STORAGE_ERRORS
from service.persistence.leases import Lease, ThreadLeases
from service.settings import RunSettings, StreamingSettings
from service.streaming.lease_keeper import keep_leases

StreamMode = Literal["values", "updates", "messages", "custom", "debug"]
STREAM_MODES: tuple[StreamMode, ...] = ("values", "updates", "messages", "custom", "debug")
# Every LangGraph stream mode an API family may ask the executor for.
GraphStreamMode = Literal[
    "values", "updates", "messages", "custom", "debug", "tasks", "checkpoints"]

log = structlog.get_logger("graphgate.run")


class RunObserver(Protocol):
    """Told how runs and their nodes went (metrics, tracing); must not block."""

    def run_finished(self, graph: str, outcome: str, seconds: float) -> None: ...

    def node_finished(self, graph: str, node: str, seconds: float) -> None: ...

# How long a cancelled run may take to unwind (cancel its nodes, flush its writes).
CANCEL_GRACE_S = 10.0


class ThreadBusy(Exception):
    """Another run holds this thread's lease."""


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One thing that happened in a run: `metadata`, a stream mode's output, `error`, `end`.

    `namespace` names the subgraph an output came from (empty for the graph itself; only
    runs that asked for subgraph output see others).
    """

    event: str
    data: Any
    namespace: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunError:
    """What a client may learn about a failure: a stable code and a fixed message."""

    code: str
    message: str
    # Whether the same request may succeed if simply sent again (shown to clients).
    retryable: bool = False


# Client-safe descriptions of failures. Never the exception text: it can hold SQL,
# hostnames, provider error bodies or secrets. The full exception goes to the log.
RECURSION = RunError("recursion_limit", "The run exceeded its step limit.")
STORAGE = RunError("storage_unavailable", "The conversation store is unavailable; try again.",
                   retryable=True)
GRAPH = RunError("graph_error", "The graph failed while running.")
TIMEOUT = RunError("run_timeout", "The run exceeded the maximum stream duration.")
LEASE_LOST = RunError(
    "lease_lost", "The run lost its claim on the thread and was stopped; retry the request.",
    retryable=True,
)
SHUTTING_DOWN = RunError(
    "shutting_down", "The server is restarting and stopped this run at its last finished "
    "step; retry the request in a moment.", retryable=True,
)


def classify(exc: BaseException) -> RunError:
    if isinstance(exc, GraphRecursionError):
        return RECURSION
    if isinstance(exc, STORAGE_ERRORS):
        return STORAGE
    return GRAPH


# Configurable keys LangGraph itself reads: a client setting them could point the run at
# another thread or checkpoint (`thread_id` is how owners are kept apart) or reach into
# the runtime. Client `configurable` values are passed to the graph without these.
RESERVED_CONFIGURABLE = frozenset({
    "thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map", "run_id",
})


@dataclass(frozen=True)
class RunOptions:
    """What a client may pass to the graph besides its input (Agent Server protocol)."""

    configurable: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tags: Sequence[str] = ()
    recursion_limit: int | None = None  # capped by [runs] recursion_limit
    context: Any = None
    interrupt_before: Sequence[str] | Literal["*"] | None = None
    interrupt_after: Sequence[str] | Literal["*"] | None = None
    subgraphs: bool = False
    checkpoint_id: str | None = None  # run from this checkpoint of the thread (time travel)
    durability: Literal["sync", "async", "exit"] | None = None  # else [runs] durability


@dataclass(frozen=True)
class RunRequest:
    graph_name: str
    graph: Pregel[Any, Any, Any, Any]
    thread_id: str  # as the client knows it
    thread_key: str  # the checkpointer's and leases' key: namespaced by owner
    input: Any
    stream_modes: Sequence[GraphStreamMode]
    request_id: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    options: RunOptions = field(default_factory=RunOptions)


# Synchronous and non-blocking by contract; see service/streaming/sse.py for why.
Emit = Callable[[RunEvent], None]


class Run:
    """A started run holding its thread's lease until `release`."""

    def __init__(self, executor: RunExecutor, request: RunRequest) -> None:
        self._executor = executor
        self.request = request
        self.run_id = request.run_id
        self._released = False
        self._lease_lost = False
        # When the lease was last extended (the keeper renews it; see lease_keeper).
        self.renewed_at = anyio.current_time()
        # (thread key, run id): built once, the keeper reads it every period.
        self.lease: Lease = (request.thread_key, self.run_id)
        self._stopped_for_shutdown = False
        self._run_scope: anyio.CancelScope | None = None
        self._abandoned: asyncio.Future[None] | None = None
        self.outcome: Literal["pending", "success", "error", "timeout"] = "pending"
        # The graph stopped at an interrupt (dynamic `interrupt()` or interrupt_before/after)
        # and waits to be resumed.
        self.interrupted = False
        # Told once the run is over, before `end` goes out (e.g. to record the thread's
        # status, so a client reading the thread after `end` sees it settled).
        self.on_finish: Callable[[Run], Awaitable[None]] | None = None
        self._finished = False

    def config(self) -> RunnableConfig:
        req = self.request
        options = req.options
        limit = self._executor.run_settings.recursion_limit
        configurable = {k: v for k, v in options.configurable.items()
                        if k not in RESERVED_CONFIGURABLE and not k.startswith("__")}
        configurable["thread_id"] = req.thread_key
        if options.checkpoint_id is not None:  # a checkpoint of this same thread
            configurable["checkpoint_id"] = options.checkpoint_id
        # The thread key, run id and graph are always ours, whatever the client sent.
        return {
            "configurable": configurable,
            "recursion_limit": min(options.recursion_limit or limit, limit),
            "run_id": uuid.UUID(req.run_id),
            "metadata": {**options.metadata, "graph_id": req.graph_name, "run_id": req.run_id},
            "tags": list(options.tags),
        }

    async def produce(self, emit: Emit) -> None:
        """Run the graph, emitting events; returns normally unless cancelled."""
        started = time.monotonic()
        try:
            await self._produce(emit)
        finally:
            observer = self._executor.observer
            if observer is not None:
                outcome = "cancelled" if self.outcome == "pending" else self.outcome
                observer.run_finished(self.request.graph_name, outcome,
                                      time.monotonic() - started)

    async def _produce(self, emit: Emit) -> None:
        req = self.request
        with run_span(self._executor.tracer_provider, graph=req.graph_name,
                      thread_id=req.thread_id, run_id=self.run_id) as span:
            await self._run(emit, span)

    async def _run(self, emit: Emit, span: Span | None) -> None:
        req = self.request
        failure: Exception | None = None
        bound = log.bind(run_id=self.run_id, thread_id=req.thread_id, graph=req.graph_name,
                         request_id=req.request_id)
        emit(RunEvent("metadata", {"run_id": self.run_id, "thread_id": req.thread_id,
                                   "graph": req.graph_name}))
        error: RunError | None = None
        max_duration_s = self._executor.streaming.max_duration_s
        with anyio.CancelScope() as run_scope:
            self._run_scope = run_scope
            if self._stopped_for_shutdown or self._lease_lost:
                run_scope.cancel()
            with anyio.move_on_after(max_duration_s) as deadline:
                try:
                    await self._stream(emit)
                except Exception as exc:
                    failure = exc
                    error = classify(exc)
                    bound.error("run_failed", error_code=error.code,
                                exc_type=type(exc).__name__, exc_info=exc)
        if self._stopped_for_shutdown:
            error = SHUTTING_DOWN
            bound.warning("run_stopped_for_shutdown")
        elif self._lease_lost:
            error = LEASE_LOST
        elif deadline.cancelled_caught:
            error = TIMEOUT
            bound.warning("run_timed_out", max_duration_s=max_duration_s)
        self.outcome = "success" if error is None else (
            "timeout" if error is TIMEOUT else "error")
        set_run_outcome(span, self.outcome, error_code=error.code if error else None,
                        exc=failure)
        # Free the thread before saying the run is over: a client that starts its next
        # turn the moment it sees `end` must not race our release and get a 409.
        with anyio.CancelScope(shield=True):
            await self.release()
            await self.finish()
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
            if not task.done():
                # A node ignoring cancellation. It may still write to the thread, so the
                # thread stays leased until it really ends.
                log.error("run_abandoned", run_id=self.run_id, grace_s=CANCEL_GRACE_S)
                self._abandoned = task
            raise

    async def _consume(self, emit: Emit) -> None:
        req = self.request
        options = req.options
        observer = self._executor.observer
        modes: list[Any] = list(req.stream_modes)
        # Node timings come from LangGraph's task events; asked for only when observed,
        # and passed on only if the client asked for them too. Likewise `updates`, which
        # is where LangGraph reports that a run stopped at an interrupt.
        timed = observer is not None and "tasks" not in modes
        if timed:
            modes.append("tasks")
        watch_updates = "updates" not in modes
        if watch_updates:
            modes.append("updates")
        started: dict[str, float] = {}
        stream: AsyncGenerator[Any, None] = req.graph.astream(  # type: ignore[assignment]
            req.input,
            self.config(),
            context=options.context,
            stream_mode=modes,
            interrupt_before=options.interrupt_before,
            interrupt_after=options.interrupt_after,
            subgraphs=options.subgraphs,
            durability=options.durability or self._executor.run_settings.durability,
        )  # an async generator, though typed as an iterator
        async with contextlib.aclosing(stream):
            async for item in stream:
                namespace, mode, chunk = item if options.subgraphs else ((), *item)
                if mode == "tasks" and observer is not None and isinstance(chunk, dict):
                    if not namespace:
                        self._time_task(observer, chunk, started)
                    if timed:
                        continue
                elif mode == "updates":
                    if not namespace and isinstance(chunk, dict) and "__interrupt__" in chunk:
                        self.interrupted = True
                    if watch_updates:
                        continue
                emit(RunEvent(mode, chunk, tuple(namespace)))

    def _time_task(self, observer: RunObserver, task: dict[str, Any],
                   started: dict[str, float]) -> None:
        task_id = task.get("id")
        if not isinstance(task_id, str):
            return
        if "triggers" in task:  # a task starting
            started[task_id] = time.monotonic()
        elif task_id in started and isinstance(task.get("name"), str):
            observer.node_finished(self.request.graph_name, task["name"],
                                   time.monotonic() - started.pop(task_id))

    @property
    def wants_renewal(self) -> bool:
        # An abandoned run keeps its lease until its node really ends (see `release`).
        return not self._released or self._abandoned is not None

    def lease_lost(self, renewed_s_ago: float) -> None:
        """The keeper could not renew our lease: stop, so two runs never interleave."""
        if self._lease_lost:
            return
        req = self.request
        log.error("lease_lost", run_id=self.run_id, thread_id=req.thread_id,
                  graph=req.graph_name, request_id=req.request_id,
                  renewed_s_ago=round(renewed_s_ago, 3))
        self._lease_lost = True
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def finish(self) -> None:
        """Run the `on_finish` hook once (also for a run cancelled before it ended)."""
        if self._finished or self.on_finish is None:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            try:
                await self.on_finish(self)
            except Exception as exc:
                log.warning("run_finish_hook_failed", run_id=self.run_id,
                            exc_type=type(exc).__name__)

    def stop_for_shutdown(self) -> None:
        """End the run at its last finished step: the client gets `error` (shutting_down,
        retry) and `end`, and the thread keeps every committed checkpoint."""
        self._stopped_for_shutdown = True
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def release(self) -> None:
        """Give the thread back (idempotent). An abandoned run keeps it until it ends."""
        if self._released:
            return
        self._released = True
        if self._abandoned is not None:
            self._executor.hold_until_done(self, self._abandoned)
            return
        await self._release_now()

    async def _release_now(self) -> None:
        try:
            await self._executor.leases.release(self.request.thread_key, self.run_id)
        except Exception as exc:
            # The lease will expire on its own after lease_ttl_s.
            log.warning("lease_release_failed", run_id=self.run_id, exc_type=type(exc).__name__)
        finally:
            self._executor.active.discard(self)

    async def _hold(self, task: asyncio.Future[None]) -> None:
        # Still in `active` meanwhile, so the keeper goes on renewing the lease.
        await asyncio.wait([task])
        await self._release_now()


class RunExecutor:
    """Starts runs; shared by every API family."""

    def __init__(
        self, leases: ThreadLeases, run_settings: RunSettings, streaming: StreamingSettings,
        *, observer: RunObserver | None = None, tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.leases = leases
        self.observer = observer
        self.tracer_provider = tracer_provider
        self.run_settings = run_settings
        self.streaming = streaming
        # Started runs that still hold their thread's lease.
        self.active: set[Run] = set()
        self._holders: set[asyncio.Task[None]] = set()

    async def keep_leases(self) -> None:
        """Renew the leases of every active run until cancelled (one task per worker)."""
        await keep_leases(self.leases, self.run_settings.lease_ttl_s, self.active)

    def hold_until_done(self, run: Run, task: asyncio.Future[None]) -> None:
        """Keep an abandoned run's lease (renewed by the keeper) until its task ends."""
        holder = asyncio.ensure_future(run._hold(task))
        self._holders.add(holder)
        holder.add_done_callback(self._holders.discard)

    async def drain(self, grace_s: float) -> None:
        """On shutdown: let runs finish for up to `grace_s`, then stop the rest cleanly."""
        with anyio.move_on_after(grace_s):
            await self.wait_idle()
        for run in list(self.active):
            run.stop_for_shutdown()

    async def wait_idle(self) -> None:
        """Return once no run holds a lease (used on shutdown, under a timeout)."""
        while self.active:  # noqa: ASYNC110 - a shutdown-only poll; an Event adds bookkeeping
            await anyio.sleep(0.05)

    async def start(self, request: RunRequest) -> Run:
        """Take the thread's lease (or raise ThreadBusy) and return the run, not yet running."""
        acquired = await self.leases.acquire(
            request.thread_key, request.run_id, self.run_settings.lease_ttl_s
        )
        if not acquired:
            raise ThreadBusy(request.thread_id)
        run = Run(self, request)
        self.active.add(run)
        return run

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
