"""Request and response bodies of the /v1 API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.streaming.executor import STREAM_MODES, StreamMode

# Caller-supplied thread ids: short, and no ':', '/', '%' or '.', so they can never be
# confused with a path, a URL escape or a tenant-scoped storage key.
THREAD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
CHECKPOINT_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
GRAPH_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

ThreadId = Annotated[str, Field(pattern=THREAD_ID_PATTERN, examples=["support-42"])]
GraphName = Annotated[str, Field(pattern=GRAPH_NAME_PATTERN)]


class _Body(BaseModel):
    # Unknown keys are an error: a client sending `config` or `configurable` must not
    # believe it had an effect.
    model_config = ConfigDict(extra="forbid")


class ChatRequest(_Body):
    message: str = Field(min_length=1, description="The user's message.")
    thread_id: ThreadId | None = Field(None, description="Omit to start a new thread.")
    graph: GraphName | None = Field(None, description="Omit for the default graph.")


class StreamRequest(_Body):
    message: str | None = Field(None, min_length=1, description="A user message.")
    input: dict[str, Any] | None = Field(None, description="Raw graph input (instead of message).")
    thread_id: ThreadId | None = None
    graph: GraphName | None = None
    stream_mode: StreamMode | list[StreamMode] = Field(
        "messages", description=f"One of {', '.join(STREAM_MODES)}, or a list of them."
    )

    @field_validator("stream_mode")
    @classmethod
    def _modes_not_empty(cls, value: StreamMode | list[StreamMode]) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("at least one stream mode is required")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> StreamRequest:
        if (self.message is None) == (self.input is None):
            raise ValueError("exactly one of message or input is required")
        return self

    @property
    def modes(self) -> list[StreamMode]:
        requested = [self.stream_mode] if isinstance(self.stream_mode, str) else self.stream_mode
        return list(dict.fromkeys(requested))  # de-duplicated, order kept


class ChatResponse(BaseModel):
    thread_id: str
    run_id: str
    graph: str
    reply: str | None = Field(description="The last AI message's text, if any.")
    output: Any = Field(description="The thread's state values after the run.")
