"""graphgate's own API: chat, invoked or streamed. Thread routes are in `v1_threads`."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.api.deps import RequestIdDep, ResourcesDep, requires
from service.api.responses import json_response
from service.api.runs import cancel_on_disconnect, message_input, start_run
from service.api.schemas import ChatRequest, ChatResponse, StreamRequest
from service.errors import ServiceError, ServiceUnavailable, StorageUnavailableError
from service.observability.stream_metrics import StreamRecorder
from service.security.principal import RUNS_CREATE, Principal
from service.streaming.executor import SHUTTING_DOWN, STORAGE, TIMEOUT, RunError, RunEvent
from service.streaming.sse import EmitFrame, EventStreamResponse
from service.streaming.v1_events import V1EventEncoder, is_token

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



@router.post("/chat/stream", responses=SSE_RESPONSE_DOC, response_class=Response)
async def chat_stream(
    body: StreamRequest, request: Request, res: ResourcesDep, request_id: RequestIdDep,
    principal: RunPrincipal,
) -> Response:
    """Run the graph and stream its output as Server-Sent Events."""
    graph_input = message_input(body.message) if body.message is not None else body.input
    started = await start_run(res, request, principal, graph_name=body.graph,
                              thread_id=body.thread_id, graph_input=graph_input,
                              modes=body.modes, request_id=request_id)
    run = started.run
    encode = V1EventEncoder(request_id, thread_key=run.request.thread_key,
                            thread_id=run.request.thread_id)
    recorder = StreamRecorder(res.metrics, run.request.graph_name,
                              run_outcome=lambda: run.outcome,
                              access=request.scope["state"].get("access"))

    async def producer(emit_frame: EmitFrame) -> None:
        def emit(event: RunEvent) -> None:
            emit_frame(encode(event))
            recorder.event(event.event, token=is_token(event))
            if event.data is STORAGE:
                res.metrics.storage_errors.labels("checkpointer").inc()

        await run.produce(emit)

    return EventStreamResponse(
        producer,
        heartbeat_interval_s=res.settings.streaming.heartbeat_interval_s,
        send_timeout_s=res.settings.streaming.send_timeout_s,
        watchdog=res.send_watchdog,
        on_close=started.close,
        observer=recorder,
    )


@router.post("/chat", response_model=ChatResponse)
async def chat(
    body: ChatRequest, request: Request, res: ResourcesDep, request_id: RequestIdDep,
    principal: RunPrincipal,
) -> Response:
    """Run the graph to completion and return its reply."""
    started = await start_run(res, request, principal, graph_name=body.graph,
                              thread_id=body.thread_id, graph_input=message_input(body.message),
                              modes=["values"], request_id=request_id)
    run = started.run
    final: Any = None
    error: RunError | None = None

    def collect(event: RunEvent) -> None:
        nonlocal final, error
        if event.event == "values":
            final = event.data
        elif isinstance(event.data, RunError):
            error = event.data

    disconnected = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            # A client that hangs up cancels its run, as a closed stream does.
            tg.start_soon(cancel_on_disconnect, request, tg.cancel_scope, disconnected)
            await run.produce(collect)
            tg.cancel_scope.cancel()
    finally:
        await started.close()
    if disconnected.is_set():
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    if error is STORAGE:
        res.metrics.storage_errors.labels("checkpointer").inc()
        raise StorageUnavailableError()
    if error is SHUTTING_DOWN:
        raise ServiceUnavailable(error.message)
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
    return json_response(payload)


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
