"""Agent Server protocol: assistants (one per served graph), plus `/ok` and `/info`.

graphgate's assistants are its configured graphs: read-only, version 1, no per-assistant
config. Each has the id the official server gives a graph's default assistant, a UUID5
of the graph name, and the graph name is accepted wherever an assistant id is.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from langgraph.pregel import Pregel

from service import __version__
from service.api.agent.schemas import AssistantSearch
from service.api.deps import ResourcesDep, requires
from service.api.responses import json_response
from service.errors import ServiceError
from service.graphs.loader import GraphRegistry
from service.security.principal import Principal

router = APIRouter(tags=["agent-protocol"])

Caller = Annotated[Principal, Depends(requires(None))]
AssistantPath = Annotated[str, Path(max_length=128)]

# The namespace the official server derives default assistant ids from (uuid.NAMESPACE_URL),
# so an assistant id a frontend has stored stays valid when it switches to graphgate.
ASSISTANT_NAMESPACE = uuid.NAMESPACE_URL
# Assistants are the configured graphs; they exist as long as the deployment does.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AssistantNotFound(ServiceError):
    status, code, title = 404, "assistant_not_found", "Assistant not found"
    detail = "No assistant with that id or graph name is served."


def assistant_id(graph_name: str) -> str:
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_name))


def resolve_assistant(graphs: GraphRegistry, ident: str) -> str:
    """The graph name for an assistant id or graph name; AssistantNotFound otherwise."""
    if ident in graphs.graphs:
        return ident
    for name in graphs.graphs:
        if assistant_id(name) == ident:
            return name
    raise AssistantNotFound()


def assistant_payload(graph_name: str) -> dict[str, Any]:
    return {
        "assistant_id": assistant_id(graph_name),
        "graph_id": graph_name,
        "name": graph_name,
        "description": None,
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": _EPOCH,
        "updated_at": _EPOCH,
    }


@router.get("/ok", include_in_schema=False)
async def ok() -> Response:
    """The official server's liveness path (the same as /healthz)."""
    return JSONResponse({"ok": True})


@router.get("/info")
async def info(_: Caller) -> Response:
    """What this server is and which protocol features it offers."""
    return JSONResponse({
        "version": __version__,  # read once at import: package metadata is files on disk
        "server": "graphgate",
        "flags": {"assistants": True, "crons": False, "langsmith": False, "store": False},
    })


def _matches(name: str, body: AssistantSearch) -> bool:
    payload_metadata: dict[str, Any] = {"created_by": "system"}
    if body.graph_id is not None and body.graph_id != name:
        return False
    if body.name is not None and body.name.lower() not in name.lower():
        return False
    return all(payload_metadata.get(k) == v for k, v in (body.metadata or {}).items())


@router.post("/assistants/search")
async def search_assistants(body: AssistantSearch, res: ResourcesDep, _: Caller) -> Response:
    """The served graphs, as assistants, filtered by graph id, name and metadata."""
    names = sorted(name for name in res.graphs.graphs if _matches(name, body))
    sort_key = body.sort_by or "name"
    if sort_key == "assistant_id":
        names.sort(key=assistant_id)
    names = names[::-1] if body.sort_order == "desc" else names
    page = names[body.offset : body.offset + body.limit]
    response = json_response([assistant_payload(name) for name in page])
    response.headers["X-Pagination-Total"] = str(len(names))
    if body.offset + len(page) < len(names):
        response.headers["X-Pagination-Next"] = str(body.offset + len(page))
    return response


@router.post("/assistants/count")
async def count_assistants(body: AssistantSearch, res: ResourcesDep, _: Caller) -> Response:
    return json_response(sum(1 for name in res.graphs.graphs if _matches(name, body)))


def _graph(res: ResourcesDep, ident: str) -> tuple[str, Pregel[Any, Any, Any, Any]]:
    name = resolve_assistant(res.graphs, ident)
    return name, res.graphs.graphs[name]


@router.get("/assistants/{assistant_id}")
async def get_assistant(assistant_id: AssistantPath, res: ResourcesDep, _: Caller) -> Response:
    name, _graph_obj = _graph(res, assistant_id)
    return json_response(assistant_payload(name))


@router.get("/assistants/{assistant_id}/graph")
async def get_assistant_graph(
    assistant_id: AssistantPath, res: ResourcesDep, _: Caller,
    xray: Annotated[int | bool, Query()] = False,
) -> Response:
    """The graph's drawable structure: nodes and edges, as LangGraph describes it."""
    _name, graph = _graph(res, assistant_id)
    drawable = await graph.aget_graph(xray=xray)
    return json_response(drawable.to_json())


def _schema(make: Any) -> Any:
    # A state type pydantic cannot describe must not turn the whole answer into a 500.
    try:
        return make()
    except Exception:
        return None


@router.get("/assistants/{assistant_id}/schemas")
async def get_assistant_schemas(assistant_id: AssistantPath, res: ResourcesDep,
                                _: Caller) -> Response:
    """JSON schemas of the graph's input, output, state, config and context."""
    name, graph = _graph(res, assistant_id)
    return json_response({
        "graph_id": name,
        "input_schema": _schema(graph.get_input_jsonschema),
        "output_schema": _schema(graph.get_output_jsonschema),
        # LangGraph describes a graph's state through its output (all state keys unless
        # the graph declares a narrower output schema).
        "state_schema": _schema(graph.get_output_jsonschema),
        "config_schema": _schema(graph.get_config_jsonschema),
        "context_schema": _schema(graph.get_context_jsonschema),
    })

