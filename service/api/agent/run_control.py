"""Agent Server protocol: a thread's runs after they start: list, get, cancel, join
(wait for the end), stream again (from `Last-Event-ID`), delete.

A run may execute on another worker or replica; these routes work from the shared run
registry and event log, so any of them can answer (see RunManager).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response

from service.api.agent.runs import follow_response
from service.api.agent.threads import owned_thread
from service.api.agent.views import aliased_json, graph_for, run_dict, run_payload, thread_config
from service.api.deps import ResourcesDep, ThreadScope, requires
from service.api.schemas import THREAD_ID_PATTERN
from service.errors import InvalidRequest, ServiceError
from service.persistence.runs import RunRecord
from service.resources import Resources
from service.security.principal import RUNS_CREATE, THREADS_READ, Principal
from service.streaming.run_manager import FINAL_STATUSES

router = APIRouter(tags=["agent-protocol"])

ThreadIdPath = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]
RunIdPath = Annotated[str, Path(pattern=r"^[0-9a-fA-F-]{36}$")]
Reader = Annotated[Principal, Depends(requires(THREADS_READ))]
Runner = Annotated[Principal, Depends(requires(RUNS_CREATE))]


class RunNotFound(ServiceError):
    status, code, title = 404, "run_not_found", "Run not found"
    detail = "No run with that id exists on this thread."


class RunStillActive(ServiceError):
    status, code, title = 409, "run_active", "Run in progress"
    detail = "The run is still in progress; cancel it or wait for it to end."


async def owned_run(request: Request, res: Resources, principal: Principal, thread_id: str,
                    run_id: str) -> tuple[ThreadScope, RunRecord]:
    space, _ = await owned_thread(request, res, principal, thread_id)
    record = await res.persistence.runs.get(space.owner, thread_id, run_id)
    if record is None:
        raise RunNotFound()
    request.scope["state"]["access"]["run_id"] = run_id
    return space, record


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: ThreadIdPath, request: Request, res: ResourcesDep, principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    status: Literal["pending", "running", "success", "error", "timeout",
                    "interrupted"] | None = None,
) -> Response:
    """The thread's runs, newest first."""
    space, _ = await owned_thread(request, res, principal, thread_id)
    records = await res.persistence.runs.list(space.owner, thread_id, limit=limit,
                                              offset=offset, status=status)
    return aliased_json([run_dict(r) for r in records], space, thread_id=thread_id)


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get_run(thread_id: ThreadIdPath, run_id: RunIdPath, request: Request,
                  res: ResourcesDep, principal: Reader) -> Response:
    space, record = await owned_run(request, res, principal, thread_id, run_id)
    return run_payload(record, space)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(
    thread_id: ThreadIdPath, run_id: RunIdPath, request: Request, res: ResourcesDep,
    principal: Runner, wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """Stop the run at its last finished step (wherever it executes)."""
    if action == "rollback":
        raise InvalidRequest("action=rollback is not supported; use interrupt.")
    space, record = await owned_run(request, res, principal, thread_id, run_id)
    if record.status not in FINAL_STATUSES:
        await res.runs.cancel(space.owner, record, action)
        if wait:
            await res.runs.wait(space.owner, record)
    if not wait:
        return Response(status_code=202)
    current = await res.persistence.runs.get(space.owner, thread_id, run_id)
    return run_payload(current or record, space)


@router.get("/threads/{thread_id}/runs/{run_id}/join")
async def join_run(thread_id: ThreadIdPath, run_id: RunIdPath, request: Request,
                   res: ResourcesDep, principal: Reader) -> Response:
    """Wait for the run to end, then answer with the thread's values."""
    space, record = await owned_run(request, res, principal, thread_id, run_id)
    await res.runs.wait(space.owner, record)
    thread = await res.persistence.threads.get(space.owner, thread_id)
    if thread is None:
        return aliased_json(None)
    snapshot = await graph_for(res, thread).aget_state(thread_config(space.key(thread_id)))
    return aliased_json(snapshot.values, space, thread_id=thread_id)


def _cursor(last_event_id: str | None) -> int | None:
    """Where a joined stream starts: after `Last-Event-ID`; "-1" replays everything;
    without one, only what the run sends from now on."""
    if last_event_id is None or last_event_id.strip() == "":
        return None
    try:
        value = int(last_event_id)
    except ValueError:
        raise InvalidRequest("Last-Event-ID is not an event id of this run.") from None
    return max(value, 0)


@router.get("/threads/{thread_id}/runs/{run_id}/stream")
async def join_run_stream(
    thread_id: ThreadIdPath, run_id: RunIdPath, request: Request, res: ResourcesDep,
    principal: Reader,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    cancel_on_disconnect: bool = False,
    stream_mode: Annotated[list[str] | None, Query()] = None,
) -> Response:
    """Follow the run's events: live, or replayed after `Last-Event-ID` (resumable
    streams and background runs keep theirs for [runs] event_retention_s)."""
    space, record = await owned_run(request, res, principal, thread_id, run_id)
    managed = res.runs.local(run_id)

    def outcome() -> str:
        return managed.run.outcome if managed is not None else "success"

    async def cancel() -> None:
        await res.runs.cancel(space.owner, record, "interrupt")

    return follow_response(
        res, request, owner=space.owner, record=record,
        durable=bool(record.kwargs.get("durable")), after=_cursor(last_event_id),
        reader=None, run_outcome=outcome, path=f"/threads/{thread_id}/runs/{run_id}",
        on_hang_up=cancel if cancel_on_disconnect else None,
        # The SDK sends `stream_mode=` (empty) when none was given: all of them.
        modes=frozenset(m for m in stream_mode if m) or None if stream_mode else None)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204,
               response_class=Response)
async def delete_run(thread_id: ThreadIdPath, run_id: RunIdPath, request: Request,
                     res: ResourcesDep, principal: Runner) -> Response:
    space, record = await owned_run(request, res, principal, thread_id, run_id)
    if record.status not in FINAL_STATUSES:
        raise RunStillActive()
    await res.persistence.runs.delete(space.owner, thread_id, run_id)
    return Response(status_code=204)
