"""Preparing an Agent Server protocol run: resolving its assistant and thread, admitting
it (the same checks as /v1, through `service.api.runs.start_run`) and launching it
under the run manager, which runs it in a task of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import Request
from langgraph.types import Command

from service.api.agent.assistants import AssistantNotFound, assistant_id, resolve_assistant
from service.api.agent.schemas import RunCreate
from service.api.deps import ThreadScope, thread_scope
from service.api.runs import StartedRun, check_input, start_run
from service.errors import InvalidRequest, ThreadNotFound, UnknownGraphError
from service.persistence.runs import RunRecord
from service.resources import Resources
from service.security.principal import Principal
from service.streaming.agent_events import AgentEventEncoder, graph_modes
from service.streaming.executor import STORAGE, Run, RunEvent, RunOptions
from service.streaming.run_manager import ManagedRun


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
    prepared = await prepare_run(res, principal, body, thread_id)
    try:
        started = await start_run(
            res, request, principal, graph_name=prepared.graph_name,
            thread_id=prepared.thread_id, graph_input=prepared.graph_input,
            modes=graph_modes(modes), request_id=request_id, options=prepared.options)
    except BaseException:
        if prepared.stateless:
            await forget(res, prepared)
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
        await forget(res, prepared)

    started.run.on_finish = finish


async def forget(res: Resources, prepared: PreparedRun) -> None:
    """Delete a stateless run's throwaway thread."""
    with anyio.CancelScope(shield=True):
        await res.persistence.erase_thread(prepared.space.owner, prepared.thread_id)


@dataclass(frozen=True)
class Launched:
    prepared: PreparedRun
    managed: ManagedRun
    reader: int  # the launching request's reader token (see RunManager.follow)
    durable: bool

    @property
    def record(self) -> RunRecord:
        return self.managed.record

    @property
    def run(self) -> Run:
        return self.managed.run


def run_kwargs(body: RunCreate, modes: list[str], durable: bool) -> dict[str, Any]:
    """The run's options as the run record keeps them (shown by GET .../runs/{id})."""
    return {
        "stream_mode": modes, "stream_subgraphs": body.stream_subgraphs,
        "stream_resumable": body.stream_resumable, "durable": durable,
        "on_disconnect": body.on_disconnect, "interrupt_before": body.interrupt_before,
        "interrupt_after": body.interrupt_after, "config": body.config.model_dump(),
        "context": body.context, "checkpoint_id": body.start_checkpoint,
    }


async def launch(res: Resources, request: Request, principal: Principal, body: RunCreate,
                 thread_id: str | None, modes: list[str], request_id: str, *,
                 durable: bool) -> Launched:
    """Admit the run and start it in its own task; its events reach readers (and, when
    durable, the shared event log) whether or not the starting client stays."""
    prepared, started = await _start(res, request, principal, body, thread_id, modes,
                                     request_id)
    run = started.run
    now = datetime.now(UTC)
    record = RunRecord(
        run_id=run.run_id, thread_id=prepared.thread_id,
        assistant_id=assistant_id(prepared.graph_name), graph=prepared.graph_name,
        status="pending", metadata=body.metadata, kwargs=run_kwargs(body, modes, durable),
        multitask_strategy=body.multitask_strategy, created_at=now, updated_at=now)
    encoder = AgentEventEncoder(modes, request_id=request_id,
                                thread_key=run.request.thread_key,
                                thread_id=prepared.thread_id)

    def observe(event: RunEvent) -> None:
        if event.data is STORAGE:
            res.metrics.storage_errors.labels("checkpointer").inc()

    try:
        managed, reader = await res.runs.launch(
            record, prepared.space.owner, run, encoder, durable=durable,
            on_done=started.close, observe=observe)
    except (TypeError, ValueError):
        # The run's options hold what no store can keep (NaN, non-string keys).
        await started.close()
        raise InvalidRequest("config and context must be plain JSON.") from None
    except BaseException:
        await started.close()
        raise
    return Launched(prepared, managed, reader, durable)
