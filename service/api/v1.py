"""graphgate's own API: chat, invoked or streamed. Thread routes are in `v1_threads`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.api.deps import (
    RequestIdDep,
    ResourcesDep,
    ThreadScope,
    check_run_limit,
    requires,
    thread_scope,
)
from service.api.schemas import ChatRequest, ChatResponse, StreamRequest
from service.errors import (
    InvalidRequest,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    StorageUnavailableError,
    ThreadBusyError,
    UnknownGraphError,
)
from service.graphs.loader import UnknownGraph
from service.resources import Resources
from service.security.principal import RUNS_CREATE, Principal
from service.security.stream_slots import StreamSlotsFull, StreamSlotsUnavailable
from service.streaming.executor import (
    STORAGE,
    TIMEOUT,
    Run,
    RunError,
    RunEvent,
    RunRequest,
    StreamMode,
    ThreadBusy,
)
from service.streaming.serialize import dumps
from service.streaming.sse import EmitFrame, EventStreamResponse
from service.streaming.v1_events import V1EventEncoder

router = APIRouter(prefix="/v1", tags=["v1"])

RunPrincipal = Annotated[Principal, Depends(requires(RUNS_CREATE))]

SSE_RESPONSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A Server-Sent Events stream; see docs/streaming.md for every event.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class _RunFailed(ServiceError):
    status, code, title = 500, "graph_error", "Graph run failed"


class _RunTimedOut(ServiceError):
    status, code, title = 504, "run_timeout", "Run timed out"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json")


async def _start_run(
    res: Resources,
    request: Request,
    space: ThreadScope,
    *,
    graph_name: str | None,
    thread_id: str | None,
    graph_input: Any,
    modes: list[StreamMode],
    request_id: str,
    message: str | None,
) -> Run:
    if res.lifecycle.draining:
        raise ServiceUnavailable("The server is shutting down; retry on another instance.")
    limit = res.settings.limits.max_message_chars
    if message is not None and len(message) > limit:
        raise InvalidRequest(f"message is longer than {limit} characters.")
    try:
        name, graph = res.graphs.get(graph_name)
    except UnknownGraph:
        raise UnknownGraphError("No graph by that name is served.") from None
    await check_run_limit(request, res)
    thread_id = thread_id or str(uuid.uuid4())
    run_request = RunRequest(
        graph_name=name,
        graph=graph,
        thread_id=thread_id,
        thread_key=space.key(thread_id),
        input=graph_input,
        stream_modes=modes,
        request_id=request_id,
    )
    try:
        run = await res.executor.start(run_request)
    except ThreadBusy:
        raise ThreadBusyError() from None
    try:
        await res.persistence.threads.touch(space.owner, thread_id, name)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await run.release()
        raise
    return run


def _message_input(message: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": message}]}


class _TooManyStreams(RateLimited):
    code, title = "too_many_streams", "Too many open streams"
    detail = "These credentials already hold their maximum of open streams; close one first."


@router.post("/chat/stream", responses=SSE_RESPONSE_DOC, response_class=Response)
async def chat_stream(
    body: StreamRequest, request: Request, res: ResourcesDep, request_id: RequestIdDep,
    principal: RunPrincipal,
) -> Response:
    """Run the graph and stream its output as Server-Sent Events."""
    graph_input = _message_input(body.message) if body.message is not None else body.input
    # The stream slot is taken before the run, so a refused stream costs nothing.
    try:
        slot = await res.stream_slots.acquire(principal.identity)
    except StreamSlotsFull:
        raise _TooManyStreams(headers={"Retry-After": "5"}) from None
    except StreamSlotsUnavailable:
        raise ServiceUnavailable("Stream limits cannot be checked right now.") from None
    try:
        run = await _start_run(
            res, request, thread_scope(principal, res),
            graph_name=body.graph,
            thread_id=body.thread_id,
            graph_input=graph_input,
            modes=body.modes,
            request_id=request_id,
            message=body.message,
        )
    except BaseException:
        await slot.release()
        raise
    encode = V1EventEncoder(request_id)

    async def producer(emit_frame: EmitFrame) -> None:
        await run.produce(lambda event: emit_frame(encode(event)))

    async def close() -> None:
        try:
            await run.release()
        finally:
            await slot.release()

    return EventStreamResponse(
        producer,
        heartbeat_interval_s=res.settings.streaming.heartbeat_interval_s,
        send_timeout_s=res.settings.streaming.send_timeout_s,
        on_close=close,
    )


@router.post("/chat", response_model=ChatResponse)
async def chat(
    body: ChatRequest, request: Request, res: ResourcesDep, request_id: RequestIdDep,
    principal: RunPrincipal,
) -> Response:
    """Run the graph to completion and return its reply."""
    run = await _start_run(
        res, request, thread_scope(principal, res),
        graph_name=body.graph,
        thread_id=body.thread_id,
        graph_input=_message_input(body.message),
        modes=["values"],
        request_id=request_id,
        message=body.message,
    )
    final: Any = None
    error: RunError | None = None

    def collect(event: RunEvent) -> None:
        nonlocal final, error
        if event.event == "values":
            final = event.data
        elif isinstance(event.data, RunError):
            error = event.data

    try:
        await run.produce(collect)
    finally:
        with anyio.CancelScope(shield=True):
            await run.release()
    if error is STORAGE:
        raise StorageUnavailableError()
    if error is TIMEOUT:
        raise _RunTimedOut(error.message)
    if error is not None:
        raise _RunFailed(error.message, error_code=error.code)
    payload = {
        "thread_id": run.request.thread_id,
        "run_id": run.run_id,
        "graph": run.request.graph_name,
        "reply": _last_ai_text(final),
        "output": final,
    }
    return _json(payload)


def _last_ai_text(values: Any) -> str | None:
    """This turn's answer: the last AI message after the last human one, if any."""
    messages = values.get("messages") if isinstance(values, dict) else None
    for message in reversed(messages or []):
        if getattr(message, "type", None) == "human":
            return None
        if getattr(message, "type", None) == "ai":
            content = message.content
            if isinstance(content, str):
                return content
            return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return None
