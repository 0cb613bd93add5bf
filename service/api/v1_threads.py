"""graphgate's own API: the caller's threads (list, state, history, delete).

Every route resolves the client's thread id inside the caller's own thread space
(`ThreadScope.key`), so another owner's thread is not merely forbidden but unreachable:
it answers 404 exactly like a thread that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from langgraph.pregel import Pregel

from service.api.deps import ResourcesDep, ThreadScope, requires, thread_scope
from service.api.responses import json_response
from service.api.schemas import CHECKPOINT_ID_PATTERN, THREAD_ID_PATTERN
from service.api.threads_view import snapshot_payload
from service.errors import ThreadBusyError, ThreadNotFound
from service.resources import Resources
from service.security.principal import THREADS_READ, THREADS_WRITE, Principal
from service.streaming.executor import ThreadBusy

router = APIRouter(prefix="/v1", tags=["v1"])

ThreadIdPath = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]
Reader = Annotated[Principal, Depends(requires(THREADS_READ))]
Writer = Annotated[Principal, Depends(requires(THREADS_WRITE))]



def _config(key: str, checkpoint_id: str | None = None) -> Any:
    configurable = {"thread_id": key}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _resolve(request: Request, res: Resources, principal: Principal, thread_id: str) -> str:
    """The caller's storage key for `thread_id` (and the id, for the access log line)."""
    request.scope.setdefault("state", {})["access"] = {"thread_id": thread_id}
    return thread_scope(principal, res).key(thread_id)


async def _thread_graph(res: Resources, key: str) -> Pregel[Any, Any, Any, Any]:
    """The graph that last ran on the thread; 404 if the thread has no checkpoint."""
    found = await res.persistence.checkpointer.aget_tuple(_config(key))
    if found is None:
        raise ThreadNotFound("No thread with that id exists.")
    graph_id = found.metadata.get("graph_id")
    graph = res.graphs.graphs.get(graph_id) if isinstance(graph_id, str) else None
    return graph or res.graphs.graphs[res.graphs.default]


@router.get("/threads")
async def list_threads(
    res: ResourcesDep,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """The caller's threads, most recently used first."""
    space = thread_scope(principal, res)
    records = await res.persistence.threads.list(space.owner, limit=limit, offset=offset)
    items = [
        {"thread_id": r.thread_id, "graph": r.graph, "created_at": r.created_at,
         "updated_at": r.updated_at}
        for r in records
    ]
    next_offset = offset + len(items) if len(items) == limit else None
    return json_response({"items": items, "next_offset": next_offset})


@router.get("/threads/{thread_id}/state")
async def thread_state(thread_id: ThreadIdPath, request: Request, res: ResourcesDep,
                       principal: Reader) -> Response:
    """The thread's current state: values, next nodes, checkpoint ids."""
    key = _resolve(request, res, principal, thread_id)
    graph = await _thread_graph(res, key)
    snapshot = await graph.aget_state(_config(key))
    return json_response({"thread_id": thread_id, **snapshot_payload(snapshot)})


@router.get("/threads/{thread_id}/history")
async def thread_history(
    thread_id: ThreadIdPath,
    request: Request,
    res: ResourcesDep,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    before: Annotated[str | None, Query(pattern=CHECKPOINT_ID_PATTERN)] = None,
) -> Response:
    """Past states, newest first. Pass `next_before` back as `before` for the next page."""
    key = _resolve(request, res, principal, thread_id)
    graph = await _thread_graph(res, key)
    before_config = _config(key, before) if before is not None else None
    items = [
        snapshot_payload(snapshot)
        async for snapshot in graph.aget_state_history(_config(key), limit=limit,
                                                       before=before_config)
    ]
    next_before = items[-1]["checkpoint_id"] if len(items) == limit else None
    return json_response({"thread_id": thread_id, "items": items, "next_before": next_before})


@router.delete("/threads/{thread_id}", status_code=204, response_class=Response)
async def delete_thread(thread_id: ThreadIdPath, request: Request, res: ResourcesDep,
                        principal: Writer) -> Response:
    """Delete the thread and all its checkpoints. 409 while a run is in progress on it."""
    space: ThreadScope = thread_scope(principal, res)
    key = _resolve(request, res, principal, thread_id)
    try:
        async with res.executor.lock_thread(key):
            await _thread_graph(res, key)
            await res.persistence.erase_thread(space.owner, thread_id)
    except ThreadBusy:
        raise ThreadBusyError() from None
    return Response(status_code=204)
