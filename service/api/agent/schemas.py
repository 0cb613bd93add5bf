"""Request bodies of the LangGraph Agent Server protocol, as `langgraph-sdk` sends them.

Unknown keys are ignored rather than refused: the SDK adds fields between releases, and
a client upgrade must not break a working backend. Known options graphgate does not
support (webhooks, delayed runs, TTLs) are refused with 422 when set, so no client
believes they took effect.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from service.api.schemas import CHECKPOINT_ID_PATTERN, THREAD_ID_PATTERN
from service.persistence.threads import dump_metadata
from service.streaming.agent_events import AGENT_STREAM_MODES

ThreadId = Annotated[str, Field(pattern=THREAD_ID_PATTERN)]
CheckpointId = Annotated[str, Field(pattern=CHECKPOINT_ID_PATTERN)]
# Node names for interrupt_before/after; "*" means every node.
NodeNames = Literal["*"] | list[Annotated[str, Field(max_length=128)]]
Page = Annotated[int, Field(ge=1, le=1000)]
Offset = Annotated[int, Field(ge=0, le=100_000)]
SortOrder = Literal["asc", "desc"]


def _storable(metadata: dict[str, Any]) -> dict[str, Any]:
    # What no store can hold (NaN, NUL characters, lone surrogates) is the client's
    # error, refused alike whichever store is configured.
    try:
        dump_metadata(metadata)
    except (TypeError, ValueError):
        raise ValueError("metadata must be JSON without NaN, NUL or lone surrogates") from None
    return metadata


Metadata = Annotated[dict[str, Any], AfterValidator(_storable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _refuse(name: str, value: Any) -> None:
    if value not in (None, False, [], {}):
        raise ValueError(f"{name} is not supported by graphgate")


class AssistantSearch(_Body):
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None
    limit: Page = 10
    offset: Offset = 0
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: SortOrder | None = None


class ThreadCreate(_Body):
    thread_id: ThreadId | None = None
    metadata: Metadata = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"
    graph_id: str | None = None
    ttl: Any = None
    supersteps: Any = None

    @model_validator(mode="after")
    def _unsupported(self) -> ThreadCreate:
        _refuse("ttl", self.ttl)
        _refuse("supersteps", self.supersteps)
        return self


class ThreadPatch(_Body):
    metadata: Metadata = Field(default_factory=dict)
    ttl: Any = None

    @model_validator(mode="after")
    def _unsupported(self) -> ThreadPatch:
        _refuse("ttl", self.ttl)
        return self


ThreadStatus = Literal["idle", "busy", "interrupted", "error"]


class ThreadSearch(_Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: ThreadStatus | None = None
    ids: list[ThreadId] | None = Field(None, max_length=1000)
    limit: Page = 10
    offset: Offset = 0
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] = "updated_at"
    sort_order: SortOrder = "desc"

    @model_validator(mode="after")
    def _unsupported(self) -> ThreadSearch:
        _refuse("searching by values", self.values)
        return self


class ThreadCount(_Body):
    metadata: dict[str, Any] | None = None
    status: ThreadStatus | None = None


class CheckpointRef(_Body):
    checkpoint_id: CheckpointId | None = None
    checkpoint_ns: str = ""

    @field_validator("checkpoint_ns")
    @classmethod
    def _root_only(cls, value: str) -> str:
        if value:
            raise ValueError("only the root checkpoint namespace is supported")
        return value


class StateUpdate(_Body):
    values: dict[str, Any] | list[Any] | None = None
    as_node: str | None = Field(None, max_length=128)
    checkpoint_id: CheckpointId | None = None
    checkpoint: CheckpointRef | None = None


class StateAtCheckpoint(_Body):
    checkpoint: CheckpointRef
    subgraphs: bool = False


class HistoryRequest(_Body):
    limit: Page = 10
    before: CheckpointRef | str | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointRef | None = None


class CommandBody(_Body):
    resume: Any = None
    update: dict[str, Any] | list[Any] | None = None
    goto: str | list[str] | None = None


class RunConfig(_Body):
    configurable: dict[str, Any] = Field(default_factory=dict)
    tags: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=64)
    recursion_limit: int | None = Field(None, ge=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


AgentStreamMode = Literal[
    "values", "updates", "messages", "messages-tuple", "custom", "debug", "tasks",
    "checkpoints", "events",
]


class RunCreate(_Body):
    assistant_id: str = Field(min_length=1, max_length=128)
    input: dict[str, Any] | None = None
    command: CommandBody | None = None
    stream_mode: AgentStreamMode | list[AgentStreamMode] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    config: RunConfig = Field(default_factory=RunConfig)
    context: dict[str, Any] | None = None
    metadata: Metadata = Field(default_factory=dict)
    checkpoint_id: CheckpointId | None = None
    checkpoint: CheckpointRef | None = None
    interrupt_before: NodeNames | None = None
    interrupt_after: NodeNames | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "reject"
    if_not_exists: Literal["reject", "create"] = "reject"
    on_disconnect: Literal["cancel", "continue"] | None = None
    on_completion: Literal["delete", "keep"] | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    webhook: Any = None
    after_seconds: Any = None

    @model_validator(mode="after")
    def _check(self) -> RunCreate:
        _refuse("webhook", self.webhook)
        _refuse("after_seconds", self.after_seconds)
        if self.input is not None and self.command is not None:
            raise ValueError("send input or command, not both")
        if self.multitask_strategy != "reject":
            raise ValueError("multitask_strategy: only 'reject' is supported")
        if "events" in self.modes:
            raise ValueError("stream_mode 'events' is not supported")
        if not self.modes:
            raise ValueError("at least one stream mode is required")
        return self

    @property
    def modes(self) -> list[str]:
        requested = [self.stream_mode] if isinstance(self.stream_mode, str) else self.stream_mode
        return [m for m in dict.fromkeys(requested) if m == "events" or m in AGENT_STREAM_MODES]

    @property
    def start_checkpoint(self) -> str | None:
        if self.checkpoint is not None and self.checkpoint.checkpoint_id is not None:
            return self.checkpoint.checkpoint_id
        return self.checkpoint_id
