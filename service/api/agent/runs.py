"""Agent Server protocol: starting runs, streamed (`/runs/stream`), awaited
(`/runs/wait`) or in the background (`/runs`), on a thread or stateless (a throwaway
thread, deleted afterwards unless `on_completion=keep`).

Runs go through the same admission as /v1 and the same executor; the run manager runs
each in a task of its own, and the response follows its events. See `run_prep`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from service.api.agent.run_prep import Launched, launch
from service.api.agent.schemas import RunCreate
from service.api.agent.views import run_payload
from service.api.deps import RequestIdDep, ResourcesDep, requires
from service.api.runs import cancel_on_disconnect
from service.api.schemas import THREAD_ID_PATTERN
from service.observability.stream_metrics import StreamRecorder
from service.persistence.runs import RunRecord
from service.resources import Resources
from service.security.principal import RUNS_CREATE, Principal
from service.streaming.sse import EmitFrame, EventStreamResponse, encode_event

router = APIRouter(tags=["agent-protocol"])

RunPrincipal = Annotated[Principal, Depends(requires(RUNS_CREATE))]
ThreadIdPath = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]

SSE_RESPONSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events in the LangGraph Agent Server format.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
}


def run_path(launched: Launched) -> str:
    """The run's URL. A stateless run's is nominal: its thread is gone when it ends."""
    if launched.prepared.stateless:
        return f"/runs/{launched.record.run_id}"
    return f"/threads/{launched.prepared.thread_id}/runs/{launched.record.run_id}"


def follow_response(res: Resources, request: Request, *, owner: str, record: RunRecord,
                    durable: bool, after: int | None, reader: int | None,
                    run_outcome: Callable[[], str], path: str,
                    on_hang_up: Callable[[], Awaitable[None]] | None = None,
                    modes: frozenset[str] | None = None) -> EventStreamResponse:
    """An SSE response following a run's events (shared by starting and joining).

    Event ids go out for durable runs only: theirs are the ones a reconnect can resume.
    """
    recorder = StreamRecorder(res.metrics, record.graph, run_outcome=run_outcome,
                              access=request.scope.setdefault("state", {}).get("access"))

    async def producer(emit_frame: EmitFrame) -> None:
        async for event in res.runs.follow(owner, record, after=after, token=reader):
            if modes is not None and not wanted(event.event, modes):
                continue
            emit_frame(encode_event(event.event, event.data, event.seq if durable else None))
            recorder.event(event.event.split("|")[0],
                           token=event.event.startswith("messages"))

    headers: list[tuple[bytes, bytes]] = [(b"content-location", path.encode())]
    if path.startswith("/threads/"):
        # The SDK reconnects here (with Last-Event-ID) when the stream is cut.
        headers.append((b"location", f"{path}/stream".encode()))

    async def close() -> None:
        if on_hang_up is not None and response.ending != "completed":
            await on_hang_up()

    response = EventStreamResponse(
        producer,
        heartbeat_interval_s=res.settings.streaming.heartbeat_interval_s,
        send_timeout_s=res.settings.streaming.send_timeout_s,
        watchdog=res.send_watchdog,
        headers=headers, on_close=close, observer=recorder)
    return response


def wanted(event: str, modes: frozenset[str]) -> bool:
    """Whether a joined stream asked for this event (run lifecycle events always go)."""
    base = event.split("|")[0]
    if base in ("metadata", "error", "end"):
        return True
    if base.startswith("messages/"):
        return "messages" in modes
    if base == "messages":
        return "messages-tuple" in modes
    return base in modes


async def _stream(thread_id: str | None, body: RunCreate, request: Request, res: Resources,
                  request_id: str, principal: Principal) -> Response:
    durable = body.stream_resumable
    launched = await launch(res, request, principal, body, thread_id, body.modes, request_id,
                            durable=durable)
    managed = launched.managed
    # A resumable stream's run keeps going while its client is away, so it can come back.
    on_disconnect = body.on_disconnect or ("continue" if durable else "cancel")

    async def cancel() -> None:
        res.runs.cancel_local(managed)

    return follow_response(
        res, request, owner=launched.prepared.space.owner, record=managed.record,
        durable=durable, after=0, reader=launched.reader,
        run_outcome=lambda: managed.run.outcome, path=run_path(launched),
        on_hang_up=cancel if on_disconnect == "cancel" else None)


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
    launched = await launch(res, request, principal, body, thread_id, ["values"], request_id,
                            durable=False)
    managed, owner = launched.managed, launched.prepared.space.owner
    final: bytes = b"null"
    error: bytes | None = None
    disconnected = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_disconnect, request, tg.cancel_scope, disconnected)
        async for event in res.runs.follow(owner, managed.record, after=0,
                                           token=launched.reader):
            if event.event == "values":
                final = event.data
            elif event.event == "error":
                error = event.data
        tg.cancel_scope.cancel()
    if disconnected.is_set():
        if body.on_disconnect != "continue":
            res.runs.cancel_local(managed)
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    # A failed run answers 200 with `__error__`, as the official server does; the SDK
    # raises it from `runs.wait` (the request succeeded, the run did not).
    body_bytes = final if error is None else b'{"__error__":' + error + b"}"
    response = Response(body_bytes, media_type="application/json")
    path = run_path(launched)
    response.headers["content-location"] = path
    if not launched.prepared.stateless:
        response.headers["location"] = f"{path}/join"
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


@router.post("/threads/{thread_id}/runs")
async def create_background_run(thread_id: ThreadIdPath, body: RunCreate, request: Request,
                                res: ResourcesDep, request_id: RequestIdDep,
                                principal: RunPrincipal) -> Response:
    """Start a run and answer at once; join it, stream it or poll it afterwards."""
    launched = await launch(res, request, principal, body, thread_id, body.modes, request_id,
                            durable=True)
    launched.managed.channel.close_reader(launched.reader)
    response = run_payload(launched.record, launched.prepared.space)
    response.headers["content-location"] = run_path(launched)
    return response
