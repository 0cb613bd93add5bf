"""Starting a run for an API route: every admission check, in the order that costs least.

Shared by the API families so each applies the same checks: draining, input limits, the
graph, the run rate limit, the caller's cap on concurrent runs and streams, the thread's
lease, and the ownership record. A refused run has taken nothing; an admitted one holds
a concurrency slot and the thread's lease until `StartedRun.close()`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from fastapi import Request

from service.api.deps import check_run_limit, thread_scope
from service.errors import (
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    ThreadBusyError,
    UnknownGraphError,
)
from service.graphs.loader import UnknownGraph
from service.resources import Resources
from service.security.principal import Principal
from service.security.stream_slots import Slot, StreamSlotsFull, StreamSlotsUnavailable
from service.settings import LimitsSettings
from service.streaming.executor import GraphStreamMode, Run, RunOptions, RunRequest, ThreadBusy

log = structlog.get_logger("graphgate.rate_limit")


class TooManyRuns(RateLimited):
    code, title = "too_many_streams", "Too many open streams"
    detail = ("These credentials already hold their maximum of open streams and runs; "
              "let one finish first.")


@dataclass
class StartedRun:
    run: Run
    slot: Slot

    async def close(self) -> None:
        """Give back the thread's lease and the concurrency slot (safe to call twice)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.run.release()
                await self.run.finish()
            finally:
                await self.slot.release()


def final_status(run: Run) -> str:
    """The thread's status once `run` is over (the Agent Server protocol's statuses)."""
    if run.outcome == "success":
        return "interrupted" if run.interrupted else "idle"
    if run.outcome == "pending":  # cancelled: the thread keeps its last committed step
        return "idle"
    return "error"


def message_input(message: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": message}]}


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content blocks
        return sum(len(str(block.get("text", ""))) if isinstance(block, dict) else
                   len(str(block)) for block in content)
    return len(str(content))


def check_input(graph_input: Any, limits: LimitsSettings) -> None:
    """Apply the message limits to raw `input` too, not only to `message`."""
    if not isinstance(graph_input, dict):
        return
    messages = graph_input.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        return
    if len(messages) > limits.max_input_messages:
        raise InvalidRequest(f"input has more than {limits.max_input_messages} messages.")
    for message in messages:
        content = message.get("content", "") if isinstance(message, dict) else message
        if _text_length(content) > limits.max_message_chars:
            raise InvalidRequest(
                f"a message is longer than {limits.max_message_chars} characters.")


async def start_run(
    res: Resources,
    request: Request,
    principal: Principal,
    *,
    graph_name: str | None,
    thread_id: str | None,
    graph_input: Any,
    modes: Sequence[GraphStreamMode],
    request_id: str,
    options: RunOptions | None = None,
) -> StartedRun:
    metrics = res.metrics
    if res.lifecycle.draining:
        metrics.runs_refused.labels("draining").inc()
        raise ServiceUnavailable("The server is shutting down; retry on another instance.")
    check_input(graph_input, res.settings.limits)
    try:
        name, graph = res.graphs.get(graph_name)
    except UnknownGraph:
        raise UnknownGraphError("No graph by that name is served.") from None
    # The concurrency slot first: a caller waiting for a slot (retrying on 429) must not
    # use up its run budget meanwhile. A refused run gives back whatever it took.
    try:
        slot = await res.stream_slots.acquire(principal.identity)
    except StreamSlotsFull:
        log.info("rate_limited", limiter="streams", path=request.url.path)
        metrics.runs_refused.labels("too_many_streams").inc()
        metrics.rate_limited.labels("streams").inc()
        raise TooManyRuns(headers={"Retry-After": "5"}) from None
    except StreamSlotsUnavailable:
        metrics.storage_errors.labels("rate_limit").inc()
        raise ServiceUnavailable("Run limits cannot be checked right now.") from None
    try:
        await check_run_limit(request, res)
    except BaseException:
        await slot.release()
        raise
    space = thread_scope(principal, res)
    thread_id = thread_id or str(uuid.uuid4())
    run_request = RunRequest(
        graph_name=name, graph=graph, thread_id=thread_id, thread_key=space.key(thread_id),
        input=graph_input, stream_modes=modes, request_id=request_id,
        options=options or RunOptions(),
    )
    try:
        run = await res.executor.start(run_request)
    except ThreadBusy:
        metrics.runs_refused.labels("thread_busy").inc()
        await slot.release()
        raise ThreadBusyError() from None
    except BaseException:
        await slot.release()
        raise
    started = StartedRun(run, slot)
    # For the request's access log line.
    request.scope.setdefault("state", {})["access"] = {
        "thread_id": thread_id, "run_id": run.run_id, "graph": name}
    threads = res.persistence.threads
    try:
        await threads.touch(space.owner, thread_id, name, status="busy")
    except BaseException:
        await started.close()
        raise

    async def record_status(finished: Run) -> None:
        await threads.set_status(space.owner, finished.request.thread_id, final_status(finished))

    run.on_finish = record_status
    return started


async def cancel_on_disconnect(request: Request, scope: anyio.CancelScope,
                               disconnected: anyio.Event) -> None:
    """Cancel `scope` when the client hangs up (for runs answered in one response)."""
    # The body has been read, so the next message is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
    scope.cancel()
