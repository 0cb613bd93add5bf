"""graphgate's own API: chat (invoke and stream) and thread state."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from langgraph.pregel import Pregel

from service.api.deps import RequestIdDep, ResourcesDep
from service.api.schemas import (
    CHECKPOINT_ID_PATTERN,
    THREAD_ID_PATTERN,
    ChatRequest,
    ChatResponse,
    StreamRequest,
)
from service.api.threads_view import snapshot_payload
from service.errors import (
    InvalidRequest,
    ServiceError,
    ServiceUnavailable,
    StorageUnavailableError,
    ThreadBusyError,
    ThreadNotFound,
    UnknownGraphError,
)
from service.graphs.loader import UnknownGraph
from service.resources import Resources
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

ThreadIdPath = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]

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


def _thread_config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


async def _start_run(
    res: Resources,
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
    request = RunRequest(
        graph_name=name,
        graph=graph,
        thread_id=thread_id or str(uuid.uuid4()),
        input=graph_input,
        stream_modes=modes,
        request_id=request_id,
    )
    try:
        return await res.executor.start(request)
    except ThreadBusy:
        raise ThreadBusyError() from None


def _message_input(message: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": message}]}


@router.post("/chat/stream", responses=SSE_RESPONSE_DOC, response_class=Response)
async def chat_stream(body: StreamRequest, res: ResourcesDep, request_id: RequestIdDep) -> Response:
    """Run the graph and stream its output as Server-Sent Events."""
    graph_input = _message_input(body.message) if body.message is not None else body.input
    run = await _start_run(
        res,
        graph_name=body.graph,
        thread_id=body.thread_id,
        graph_input=graph_input,
        modes=body.modes,
        request_id=request_id,
        message=body.message,
    )
    encode = V1EventEncoder(request_id)

    async def producer(emit_frame: EmitFrame) -> None:
        await run.produce(lambda event: emit_frame(encode(event)))

    return EventStreamResponse(
        producer,
        heartbeat_interval_s=res.settings.streaming.heartbeat_interval_s,
        send_timeout_s=res.settings.streaming.send_timeout_s,
        on_close=run.release,
    )


@router.post("/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, res: ResourcesDep, request_id: RequestIdDep) -> Response:
    """Run the graph to completion and return its reply."""
    run = await _start_run(
        res,
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


async def _thread_graph(res: Resources, thread_id: str) -> Pregel[Any, Any, Any, Any]:
    """The graph that last ran on the thread; 404 if the thread has no checkpoint."""
    found = await res.persistence.checkpointer.aget_tuple(_thread_config(thread_id))  # type: ignore[arg-type]
    if found is None:
        raise ThreadNotFound("No thread with that id exists.")
    graph_id = found.metadata.get("graph_id")
    graph = res.graphs.graphs.get(graph_id) if isinstance(graph_id, str) else None
    return graph or res.graphs.graphs[res.graphs.default]


@router.get("/threads/{thread_id}/state")
async def thread_state(thread_id: ThreadIdPath, res: ResourcesDep) -> Response:
    """The thread's current state: values, next nodes, checkpoint ids."""
    graph = await _thread_graph(res, thread_id)
    snapshot = await graph.aget_state(_thread_config(thread_id))  # type: ignore[arg-type]
    return _json({"thread_id": thread_id, **snapshot_payload(snapshot)})


@router.get("/threads/{thread_id}/history")
async def thread_history(
    thread_id: ThreadIdPath,
    res: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    before: Annotated[str | None, Query(pattern=CHECKPOINT_ID_PATTERN)] = None,
) -> Response:
    """Past states, newest first. Pass `next_before` back as `before` for the next page."""
    graph = await _thread_graph(res, thread_id)
    before_config = None
    if before is not None:
        before_config = {"configurable": {"thread_id": thread_id, "checkpoint_id": before}}
    items = [
        snapshot_payload(snapshot)
        async for snapshot in graph.aget_state_history(
            _thread_config(thread_id),  # type: ignore[arg-type]
            limit=limit,
            before=before_config,  # type: ignore[arg-type]
        )
    ]
    next_before = items[-1]["checkpoint_id"] if len(items) == limit else None
    return _json({"thread_id": thread_id, "items": items, "next_before": next_before})


@router.delete("/threads/{thread_id}", status_code=204, response_class=Response)
async def delete_thread(thread_id: ThreadIdPath, res: ResourcesDep) -> Response:
    """Delete the thread and all its checkpoints. 409 while a run is in progress on it."""
    try:
        async with res.executor.lock_thread(thread_id):
            await _thread_graph(res, thread_id)
            await res.persistence.checkpointer.adelete_thread(thread_id)
    except ThreadBusy:
        raise ThreadBusyError() from None
    return Response(status_code=204)
