"""Agent Server protocol: threads and their state.

Every route works inside the caller's own thread space, as the /v1 routes do: another
owner's thread answers 404 exactly like a missing one, and search sees only the
caller's threads.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from service.api.agent.assistants import resolve_assistant
from service.api.agent.schemas import (
    CheckpointRef,
    HistoryRequest,
    StateAtCheckpoint,
    StateUpdate,
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
)
from service.api.agent.views import (
    aliased_json,
    graph_for,
    note_thread,
    state_payload,
    thread_config,
    thread_payload,
)
from service.api.deps import ResourcesDep, ThreadScope, requires, thread_scope
from service.api.schemas import CHECKPOINT_ID_PATTERN, THREAD_ID_PATTERN
from service.errors import InvalidRequest, ServiceError, ThreadBusyError, ThreadNotFound
from service.persistence.threads import ThreadRecord
from service.resources import Resources
from service.security.principal import THREADS_READ, THREADS_WRITE, Principal
from service.streaming.executor import ThreadBusy
from service.streaming.serialize import dumps

router = APIRouter(tags=["agent-protocol"])

ThreadIdPath = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]
CheckpointPath = Annotated[str, Path(pattern=CHECKPOINT_ID_PATTERN)]
Reader = Annotated[Principal, Depends(requires(THREADS_READ))]
Writer = Annotated[Principal, Depends(requires(THREADS_WRITE))]
_CHECKPOINT_ID = re.compile(CHECKPOINT_ID_PATTERN)


class ThreadExists(ServiceError):
    status, code, title = 409, "thread_exists", "Thread already exists"
    detail = "A thread with that id already exists."


async def owned_thread(request: Request, res: Resources, principal: Principal,
                       thread_id: str) -> tuple[ThreadScope, ThreadRecord]:
    """The caller's thread, or 404 (also when another owner has a thread by that id)."""
    note_thread(request, thread_id)
    space = thread_scope(principal, res)
    record = await res.persistence.threads.get(space.owner, thread_id)
    if record is None:
        raise ThreadNotFound("No thread with that id exists.")
    return space, record


@router.post("/threads")
async def create_thread(body: ThreadCreate, request: Request, res: ResourcesDep,
                        principal: Writer) -> Response:
    space = thread_scope(principal, res)
    thread_id = body.thread_id or str(uuid.uuid4())
    note_thread(request, thread_id)
    metadata = dict(body.metadata)
    if body.graph_id is not None:
        graph_name = resolve_assistant(res.graphs, body.graph_id)
        metadata.setdefault("graph_id", graph_name)
    threads = res.persistence.threads
    record = await threads.create(space.owner, thread_id, metadata)
    if record is None:
        if body.if_exists == "raise":
            raise ThreadExists()
        record = await threads.get(space.owner, thread_id)
        if record is None:  # deleted in between
            raise ThreadNotFound("No thread with that id exists.")
        return aliased_json(await thread_payload(res, space, record), space,
                            thread_id=thread_id)
    return aliased_json(await thread_payload(res, space, record, with_values=False), space,
                        thread_id=thread_id)


@router.get("/threads/{thread_id}")
async def get_thread(thread_id: ThreadIdPath, request: Request, res: ResourcesDep,
                     principal: Reader) -> Response:
    space, record = await owned_thread(request, res, principal, thread_id)
    return aliased_json(await thread_payload(res, space, record), space, thread_id=thread_id)


@router.patch("/threads/{thread_id}")
async def patch_thread(thread_id: ThreadIdPath, body: ThreadPatch, request: Request,
                       res: ResourcesDep, principal: Writer) -> Response:
    """Merge `metadata` into the thread's metadata."""
    space, _ = await owned_thread(request, res, principal, thread_id)
    record = await res.persistence.threads.update(space.owner, thread_id,
                                                  metadata=body.metadata)
    if record is None:
        raise ThreadNotFound("No thread with that id exists.")
    return aliased_json(await thread_payload(res, space, record), space, thread_id=thread_id)


@router.delete("/threads/{thread_id}", status_code=204, response_class=Response)
async def delete_thread(thread_id: ThreadIdPath, request: Request, res: ResourcesDep,
                        principal: Writer) -> Response:
    """Delete the thread and its checkpoints; 409 while a run is in progress on it."""
    space, _ = await owned_thread(request, res, principal, thread_id)
    key = space.key(thread_id)
    try:
        async with res.executor.lock_thread(key):
            await res.persistence.erase_thread(space.owner, thread_id)
    except ThreadBusy:
        raise ThreadBusyError() from None
    return Response(status_code=204)


@router.post("/threads/search")
async def search_threads(body: ThreadSearch, res: ResourcesDep, principal: Reader) -> Response:
    """The caller's threads, filtered by metadata and status, newest first by default."""
    space = thread_scope(principal, res)
    threads = res.persistence.threads
    records = await threads.search(
        space.owner, metadata=body.metadata, status=body.status, ids=body.ids,
        limit=body.limit, offset=body.offset, sort_by=body.sort_by,
        sort_order=body.sort_order)
    items = [await thread_payload(res, space, record) for record in records]
    body_json = dumps(items)
    for record in records:
        body_json = body_json.replace(space.key(record.thread_id).encode(),
                                      record.thread_id.encode())
    response = Response(body_json, media_type="application/json")
    if len(records) == body.limit:
        response.headers["X-Pagination-Next"] = str(body.offset + len(records))
    return response


@router.post("/threads/count")
async def count_threads(body: ThreadCount, res: ResourcesDep, principal: Reader) -> Response:
    space = thread_scope(principal, res)
    total = await res.persistence.threads.count(space.owner, metadata=body.metadata,
                                                status=body.status)
    return aliased_json(total)


async def _state(res: Resources, space: ThreadScope, record: ThreadRecord,
                 checkpoint_id: str | None, subgraphs: bool) -> Response:
    graph = graph_for(res, record)
    config = thread_config(space.key(record.thread_id), checkpoint_id)
    snapshot = await graph.aget_state(config, subgraphs=subgraphs)
    if checkpoint_id is not None and not snapshot.values and snapshot.created_at is None:
        raise ThreadNotFound("No checkpoint with that id exists on this thread.")
    return aliased_json(state_payload(snapshot, record.thread_id), space,
                        thread_id=record.thread_id)


@router.get("/threads/{thread_id}/state")
async def get_state(thread_id: ThreadIdPath, request: Request, res: ResourcesDep,
                    principal: Reader, subgraphs: bool = False) -> Response:
    space, record = await owned_thread(request, res, principal, thread_id)
    return await _state(res, space, record, None, subgraphs)


@router.get("/threads/{thread_id}/state/{checkpoint_id}")
async def get_state_at(thread_id: ThreadIdPath, checkpoint_id: CheckpointPath,
                       request: Request, res: ResourcesDep, principal: Reader,
                       subgraphs: bool = False) -> Response:
    space, record = await owned_thread(request, res, principal, thread_id)
    return await _state(res, space, record, checkpoint_id, subgraphs)


@router.post("/threads/{thread_id}/state/checkpoint")
async def post_state_at(thread_id: ThreadIdPath, body: StateAtCheckpoint, request: Request,
                        res: ResourcesDep, principal: Reader) -> Response:
    space, record = await owned_thread(request, res, principal, thread_id)
    return await _state(res, space, record, body.checkpoint.checkpoint_id, body.subgraphs)


@router.post("/threads/{thread_id}/state")
async def update_state(thread_id: ThreadIdPath, body: StateUpdate, request: Request,
                       res: ResourcesDep, principal: Writer) -> Response:
    """Write `values` into the thread's state as if node `as_node` had returned them."""
    space, record = await owned_thread(request, res, principal, thread_id)
    key = space.key(thread_id)
    checkpoint_id = body.checkpoint_id or (body.checkpoint.checkpoint_id
                                           if body.checkpoint else None)
    graph = graph_for(res, record)
    if body.as_node is not None and body.as_node not in graph.nodes:
        raise InvalidRequest("as_node does not name a node of this thread's graph.")
    try:
        async with res.executor.lock_thread(key):
            config = await graph.aupdate_state(thread_config(key, checkpoint_id), body.values,
                                               as_node=body.as_node)
            await res.persistence.threads.touch(space.owner, thread_id,
                                                record.graph or res.graphs.default)
    except ThreadBusy:
        raise ThreadBusyError() from None
    configurable = config.get("configurable", {})
    return aliased_json({"checkpoint": {
        "thread_id": thread_id, "checkpoint_ns": configurable.get("checkpoint_ns", ""),
        "checkpoint_id": configurable.get("checkpoint_id")}}, space, thread_id=thread_id)


async def _history(res: Resources, space: ThreadScope, record: ThreadRecord, *, limit: int,
                   before: str | None, metadata: dict[str, Any] | None,
                   checkpoint_id: str | None) -> Response:
    graph = graph_for(res, record)
    key = space.key(record.thread_id)
    states = [
        state_payload(snapshot, record.thread_id)
        async for snapshot in graph.aget_state_history(
            thread_config(key, checkpoint_id), limit=limit, filter=metadata,
            before=thread_config(key, before) if before else None)
    ]
    return aliased_json(states, space, thread_id=record.thread_id)


def _before_id(before: CheckpointRef | str | None) -> str | None:
    if isinstance(before, CheckpointRef):
        return before.checkpoint_id
    if before is not None and not _CHECKPOINT_ID.match(before):
        raise InvalidRequest("before is not a checkpoint id.")
    return before


@router.post("/threads/{thread_id}/history")
async def post_history(thread_id: ThreadIdPath, body: HistoryRequest, request: Request,
                       res: ResourcesDep, principal: Reader) -> Response:
    """Past states of the thread, newest first."""
    space, record = await owned_thread(request, res, principal, thread_id)
    return await _history(res, space, record, limit=body.limit, before=_before_id(body.before),
                          metadata=body.metadata,
                          checkpoint_id=body.checkpoint.checkpoint_id if body.checkpoint else None)


@router.get("/threads/{thread_id}/history")
async def get_history(
    thread_id: ThreadIdPath, request: Request, res: ResourcesDep, principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    before: Annotated[str | None, Query(pattern=CHECKPOINT_ID_PATTERN)] = None,
) -> Response:
    space, record = await owned_thread(request, res, principal, thread_id)
    return await _history(res, space, record, limit=limit, before=before, metadata=None,
                          checkpoint_id=None)

