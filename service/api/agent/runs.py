"""Agent Server protocol: runs, streamed (`/runs/stream`) or awaited (`/runs/wait`), on a
thread or stateless (a throwaway thread, deleted afterwards unless `on_completion=keep`).

Runs go through the same admission as /v1 (`service.api.runs.start_run`: draining,
input limits, run rate limit, concurrency cap, thread lease, ownership record) and the
same executor; only the wire format differs (`service.streaming.agent_events`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from langgraph.types import Command

from service.api.agent.assistants import AssistantNotFound, assistant_id, resolve_assistant
from service.api.agent.schemas import RunCreate
from service.api.agent.views import aliased_json
from service.api.deps import RequestIdDep, ResourcesDep, ThreadScope, requires, thread_scope
from service.api.runs import StartedRun, cancel_on_disconnect, check_input, start_run
from service.api.schemas import THREAD_ID_PATTERN
from service.errors import InvalidRequest, ThreadNotFound, UnknownGraphError
from service.observability.stream_metrics import StreamRecorder
from service.resources import Resources
from service.security.principal import RUNS_CREATE, Principal
from service.streaming.agent_events import AgentEventEncoder, graph_modes
from service.streaming.executor import STORAGE, Run, RunError, RunEvent, RunOptions
from service.streaming.sse import EmitFrame, EventStreamResponse, encode_event
from service.streaming.v1_events import is_token

router = APIRouter(tags=["agent-protocol"])

RunPrincipal = Annotated[Principal, Depends(requires(RUNS_CREATE))]
ThreadIdPath = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]

SSE_RESPONSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events in the LangGraph Agent Server format.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
}


@dataclass(frozen=True)
class PreparedRun:
    graph_name: str
    thread_id: str
    space: ThreadScope
    stateless: bool
    graph_input: Any
    options: RunOptions


def _graph_name(res: Resources, ident: str) -> str:
    # 422 rather than the assistant routes' 404, as the official server answers a run
    # request naming an unknown assistant (the request is wrong, not the URL).
    try:
        return resolve_assistant(res.graphs, ident)
    except AssistantNotFound:
        raise UnknownGraphError("No assistant with that id or graph name is served.") from None


def _check_nodes(res: Resources, graph_name: str, body: RunCreate) -> None:
    nodes = res.graphs.graphs[graph_name].nodes
    for names in (body.interrupt_before, body.interrupt_after):
        if isinstance(names, list) and any(name not in nodes for name in names):
            raise InvalidRequest("interrupt_before/after names a node the graph does not have.")


def _graph_input(body: RunCreate) -> Any:
    if body.command is None:
        return body.input
    command = body.command
    return Command(resume=command.resume, update=command.update, goto=command.goto or ())


async def prepare_run(res: Resources, principal: Principal, body: RunCreate,
                      thread_id: str | None) -> PreparedRun:
    """Resolve the assistant, the thread (creating it when asked) and the run's options."""
    graph_name = _graph_name(res, body.assistant_id)
    _check_nodes(res, graph_name, body)
    check_input(body.input, res.settings.limits)
    space = thread_scope(principal, res)
    threads = res.persistence.threads
    graph_metadata = {"graph_id": graph_name, "assistant_id": assistant_id(graph_name)}
    stateless = thread_id is None
    if thread_id is None:
        thread_id = str(uuid.uuid4())
        await threads.create(space.owner, thread_id, graph_metadata)
    else:
        record = await threads.get(space.owner, thread_id)
        if record is None and body.if_not_exists == "create":
            await threads.create(space.owner, thread_id, graph_metadata)
        elif record is None:
            raise ThreadNotFound("No thread with that id exists.")
        elif any(record.metadata.get(k) != v for k, v in graph_metadata.items()):
            # Frontends find a graph's threads by these (agent-chat-ui searches on them).
            await threads.update(space.owner, thread_id, metadata=graph_metadata)
    config = body.config
    options = RunOptions(
        configurable=config.configurable,
        metadata={**config.metadata, **body.metadata},
        tags=config.tags,
        recursion_limit=config.recursion_limit,
        context=body.context,
        interrupt_before=body.interrupt_before,
        interrupt_after=body.interrupt_after,
        subgraphs=body.stream_subgraphs,
        checkpoint_id=body.start_checkpoint,
        durability=body.durability,
    )
    return PreparedRun(graph_name, thread_id, space, stateless, _graph_input(body), options)


async def _start(res: Resources, request: Request, principal: Principal, body: RunCreate,
                 thread_id: str | None, modes: list[str], request_id: str,
                 ) -> tuple[PreparedRun, StartedRun]:
    if body.stream_resumable or body.on_disconnect == "continue":
        raise InvalidRequest("Resumable streams and on_disconnect=continue are not "
                             "supported yet.")
    prepared = await prepare_run(res, principal, body, thread_id)
    try:
        started = await start_run(
            res, request, principal, graph_name=prepared.graph_name,
            thread_id=prepared.thread_id, graph_input=prepared.graph_input,
            modes=graph_modes(modes), request_id=request_id, options=prepared.options)
    except BaseException:
        if prepared.stateless:
            await _forget(res, prepared)
        raise
    if prepared.stateless and body.on_completion != "keep":
        _forget_when_finished(res, prepared, started)
    return prepared, started


def _forget_when_finished(res: Resources, prepared: PreparedRun, started: StartedRun) -> None:
    """Delete the throwaway thread as the run finishes, before `end` reaches the client."""
    record_status = started.run.on_finish

    async def finish(run: Run) -> None:
        if record_status is not None:
            await record_status(run)
        await _forget(res, prepared)

    started.run.on_finish = finish


async def _forget(res: Resources, prepared: PreparedRun) -> None:
    """Delete a stateless run's throwaway thread."""
    with anyio.CancelScope(shield=True):
        key = prepared.space.key(prepared.thread_id)
        await res.persistence.checkpointer.adelete_thread(key)
        await res.persistence.threads.delete(prepared.space.owner, prepared.thread_id)


def _run_location(prepared: PreparedRun, run_id: str) -> str:
    if prepared.stateless:
        return f"/runs/{run_id}"
    return f"/threads/{prepared.thread_id}/runs/{run_id}"


async def _stream(thread_id: str | None, body: RunCreate, request: Request, res: Resources,
                  request_id: str, principal: Principal) -> Response:
    prepared, started = await _start(res, request, principal, body, thread_id, body.modes,
                                     request_id)
    run = started.run
    encode = AgentEventEncoder(body.modes, request_id=request_id,
                               thread_key=run.request.thread_key, thread_id=prepared.thread_id)
    recorder = StreamRecorder(res.metrics, prepared.graph_name, run_outcome=lambda: run.outcome,
                              access=request.scope["state"].get("access"))

    async def producer(emit_frame: EmitFrame) -> None:
        def emit(event: RunEvent) -> None:
            for name, data in encode(event):
                emit_frame(encode_event(name, data))
            recorder.event(event.event, token=is_token(event))
            if event.data is STORAGE:
                res.metrics.storage_errors.labels("checkpointer").inc()

        await run.produce(emit)

    return EventStreamResponse(
        producer,
        heartbeat_interval_s=res.settings.streaming.heartbeat_interval_s,
        send_timeout_s=res.settings.streaming.send_timeout_s,
        headers=[(b"content-location", _run_location(prepared, run.run_id).encode())],
        on_close=started.close,
        observer=recorder,
    )


@router.post("/threads/{thread_id}/runs/stream", responses=SSE_RESPONSE_DOC,
             response_class=Response)
async def stream_thread_run(thread_id: ThreadIdPath, body: RunCreate, request: Request,
                            res: ResourcesDep, request_id: RequestIdDep,
                            principal: RunPrincipal) -> Response:
    """Run the assistant on the thread and stream its output."""
    return await _stream(thread_id, body, request, res, request_id, principal)


@router.post("/runs/stream", responses=SSE_RESPONSE_DOC, response_class=Response)
async def stream_stateless_run(body: RunCreate, request: Request, res: ResourcesDep,
                               request_id: RequestIdDep, principal: RunPrincipal) -> Response:
    """Run the assistant on a throwaway thread and stream its output."""
    return await _stream(None, body, request, res, request_id, principal)


async def _wait(thread_id: str | None, body: RunCreate, request: Request, res: Resources,
                request_id: str, principal: Principal) -> Response:
    prepared, started = await _start(res, request, principal, body, thread_id, ["values"],
                                     request_id)
    run = started.run
    final: Any = None
    error: RunError | None = None

    def collect(event: RunEvent) -> None:
        nonlocal final, error
        if event.event == "values" and not event.namespace:
            final = event.data
        elif isinstance(event.data, RunError):
            error = event.data

    disconnected = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_disconnect, request, tg.cancel_scope, disconnected)
            await run.produce(collect)
            tg.cancel_scope.cancel()
    finally:
        await started.close()
    if disconnected.is_set():
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    if error is not None:
        if error is STORAGE:
            res.metrics.storage_errors.labels("checkpointer").inc()
        # As the official server answers a failed run: 200 with `__error__`, which the SDK
        # raises from `runs.wait` (the HTTP request itself succeeded; the run did not).
        final = {"__error__": {"error": error.code, "message": error.message,
                               "retryable": error.retryable, "request_id": request_id}}
    response = aliased_json(final, prepared.space, thread_id=prepared.thread_id)
    response.headers["content-location"] = _run_location(prepared, run.run_id)
    return response


@router.post("/threads/{thread_id}/runs/wait")
async def wait_thread_run(thread_id: ThreadIdPath, body: RunCreate, request: Request,
                          res: ResourcesDep, request_id: RequestIdDep,
                          principal: RunPrincipal) -> Response:
    """Run the assistant on the thread and return the thread's values when it ends."""
    return await _wait(thread_id, body, request, res, request_id, principal)


@router.post("/runs/wait")
async def wait_stateless_run(body: RunCreate, request: Request, res: ResourcesDep,
                             request_id: RequestIdDep, principal: RunPrincipal) -> Response:
    """Run the assistant on a throwaway thread and return its final values."""
    return await _wait(None, body, request, res, request_id, principal)
