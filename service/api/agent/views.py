"""How threads and thread states look in the Agent Server protocol, and the JSON that
carries them with the owner namespace rewritten out."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel
from langgraph.types import StateSnapshot

from service.api.deps import ThreadScope
from service.persistence.runs import RunRecord
from service.persistence.threads import ThreadRecord
from service.resources import Resources
from service.streaming.serialize import dumps

Graph = Pregel[Any, Any, Any, Any]


def aliased_json(payload: Any, space: ThreadScope | None = None, *, thread_id: str | None = None,
                 status: int = 200) -> Response:
    """JSON with the storage key of `thread_id` (checkpoint configs and metadata carry it)
    replaced by the client's own id."""
    body = dumps(payload)
    if space is not None and thread_id is not None:
        body = body.replace(space.key(thread_id).encode(), thread_id.encode())
    return Response(body, status_code=status, media_type="application/json")


def note_thread(request: Request, thread_id: str) -> None:
    """Name the thread on the request's access log line."""
    request.scope.setdefault("state", {})["access"] = {"thread_id": thread_id}


def thread_config(key: str, checkpoint_id: str | None = None) -> RunnableConfig:
    configurable = {"thread_id": key}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def graph_for(res: Resources, record: ThreadRecord) -> Graph:
    """The graph that last ran on the thread (else the one it was created for, else the
    default): the one whose state schema reads its checkpoints."""
    for name in (record.graph, record.metadata.get("graph_id")):
        if isinstance(name, str) and name in res.graphs.graphs:
            return res.graphs.graphs[name]
    return res.graphs.graphs[res.graphs.default]


def _interrupt(interrupt: Any) -> dict[str, Any]:
    return {"id": interrupt.id, "value": interrupt.value}


def state_payload(snapshot: StateSnapshot, thread_id: str) -> dict[str, Any]:
    """A ThreadState as the official server sends it."""
    configurable = (snapshot.config or {}).get("configurable", {})
    parent = (snapshot.parent_config or {}).get("configurable", {})

    def checkpoint(conf: dict[str, Any]) -> dict[str, Any] | None:
        if not conf.get("checkpoint_id"):
            return None
        return {"thread_id": thread_id, "checkpoint_ns": conf.get("checkpoint_ns", ""),
                "checkpoint_id": conf["checkpoint_id"]}

    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "tasks": [
            {
                "id": task.id,
                "name": task.name,
                "path": list(task.path),
                # Exception text may hold secrets or SQL: clients learn only that it failed.
                "error": None if task.error is None else "The task failed.",
                "interrupts": [_interrupt(i) for i in task.interrupts],
                "checkpoint": None,
                "state": None,
                "result": task.result,
            }
            for task in snapshot.tasks
        ],
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint(configurable) or {
            "thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": None},
        "parent_checkpoint": checkpoint(parent),
        "interrupts": [_interrupt(i) for i in snapshot.interrupts],
        "checkpoint_id": configurable.get("checkpoint_id"),
        "parent_checkpoint_id": parent.get("checkpoint_id"),
    }


async def thread_payload(res: Resources, space: ThreadScope, record: ThreadRecord,
                         *, with_values: bool = True) -> dict[str, Any]:
    """A Thread as the official server sends it, with its current values and interrupts."""
    values: Any = None
    interrupts: dict[str, list[dict[str, Any]]] = {}
    if with_values:
        graph = graph_for(res, record)
        snapshot = await graph.aget_state(thread_config(space.key(record.thread_id)))
        values = snapshot.values
        interrupts = {task.id: [_interrupt(i) for i in task.interrupts]
                      for task in snapshot.tasks if task.interrupts}
    return {
        "thread_id": record.thread_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "state_updated_at": record.updated_at,
        "metadata": record.metadata,
        "status": record.status,
        "config": {},
        "values": values,
        "interrupts": interrupts,
    }


def run_dict(record: RunRecord) -> dict[str, Any]:
    """A Run as the official server sends it."""
    return {
        "run_id": record.run_id,
        "thread_id": record.thread_id,
        "assistant_id": record.assistant_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "status": record.status,
        "metadata": record.metadata,
        "kwargs": record.kwargs,
        "multitask_strategy": record.multitask_strategy,
    }


def run_payload(record: RunRecord, space: ThreadScope) -> Response:
    return aliased_json(run_dict(record), space, thread_id=record.thread_id)
