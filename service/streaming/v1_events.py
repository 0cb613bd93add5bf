"""graphgate's own (`/v1`) SSE wire format for run events. See docs/streaming.md."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage

from service.streaming.executor import RunError, RunEvent
from service.streaming.serialize import dumps
from service.streaming.sse import encode_event

_MESSAGE_TYPES = {"AIMessageChunk": "ai", "HumanMessageChunk": "human", "ToolMessageChunk": "tool",
                  "SystemMessageChunk": "system", "ChatMessageChunk": "chat"}


def message_payload(message: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """A `messages` event: one token delta (or one whole message) and where it came from."""
    if not isinstance(message, BaseMessage):
        return {"message_id": None, "type": type(message).__name__, "content": message,
                "node": metadata.get("langgraph_node"), "step": metadata.get("langgraph_step")}
    payload: dict[str, Any] = {
        "message_id": message.id,
        "type": _MESSAGE_TYPES.get(message.type, message.type),
        "content": message.content,
        "node": metadata.get("langgraph_node"),
        "step": metadata.get("langgraph_step"),
    }
    tool_call_chunks = getattr(message, "tool_call_chunks", None)
    if tool_call_chunks:
        payload["tool_call_chunks"] = [
            {k: chunk.get(k) for k in ("name", "args", "id", "index")} for chunk in tool_call_chunks
        ]
    tool_calls = getattr(message, "tool_calls", None)
    if tool_calls and not tool_call_chunks:
        payload["tool_calls"] = tool_calls
    if message.type == "tool":
        payload["tool_call_id"] = getattr(message, "tool_call_id", None)
        payload["name"] = message.name
    if getattr(message, "chunk_position", None) == "last":
        payload["last"] = True
    return payload


def is_token(event: RunEvent) -> bool:
    """A `messages` event carrying model output text (what "first token" measures)."""
    if event.event != "messages":
        return False
    message = event.data[0] if isinstance(event.data, tuple) else None
    return (isinstance(message, BaseMessage) and message.type in ("ai", "AIMessageChunk")
            and bool(message.content))


class V1EventEncoder:
    """Turns one run's events into SSE frames with ids increasing from 1."""

    def __init__(self, request_id: str, *, thread_key: str | None = None,
                 thread_id: str | None = None) -> None:
        self._request_id = request_id
        self._next_id = 0
        # `debug` (and any event carrying a run config) names the checkpointer's thread
        # key; clients know the thread by its own id, and the owner namespace stays ours.
        self._alias = None
        if thread_key and thread_id:
            self._alias = (thread_key.encode(), thread_id.encode())

    def data(self, event: RunEvent) -> Any:
        if event.event == "messages":
            message, metadata = event.data
            return message_payload(message, metadata)
        if isinstance(event.data, RunError):
            return {"code": event.data.code, "message": event.data.message,
                    "retryable": event.data.retryable, "request_id": self._request_id}
        return event.data

    def __call__(self, event: RunEvent) -> bytes:
        self._next_id += 1
        data = dumps(self.data(event))
        if self._alias is not None and event.event != "messages":  # tokens never carry it
            data = data.replace(*self._alias)
        return encode_event(event.event, data, self._next_id)
