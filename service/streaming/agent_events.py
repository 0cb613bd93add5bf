"""The LangGraph Agent Server's SSE wire format for run events.

As the official server sends them (and the `langgraph-sdk` client and agent-chat-ui
read them): `metadata` first; each stream mode's output under the mode's name, with
`|<namespace>` appended for subgraph output; `messages` mode as `messages/metadata`
(once per message), `messages/partial` (the message accumulated so far, not a delta)
and `messages/complete` (a message that was not streamed as tokens);
`messages-tuple` mode as `messages` with `[chunk, metadata]`; `error` with a safe
code and message; `end` last (older servers send it, the SDK stops on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message

from service.streaming.executor import GraphStreamMode, RunError, RunEvent
from service.streaming.serialize import dumps
from service.streaming.sse import encode_event

# Client-side stream modes, and the LangGraph mode each is made from.
AGENT_STREAM_MODES: dict[str, GraphStreamMode] = {
    "values": "values",
    "updates": "updates",
    "messages": "messages",
    "messages-tuple": "messages",
    "custom": "custom",
    "debug": "debug",
    "tasks": "tasks",
    "checkpoints": "checkpoints",
}


def graph_modes(modes: Iterable[str]) -> list[GraphStreamMode]:
    """The LangGraph stream modes that serve these client modes, de-duplicated."""
    return list(dict.fromkeys(AGENT_STREAM_MODES[mode] for mode in modes))


class AgentEventEncoder:
    """Turns one run's events into Agent Server SSE frames.

    Args:
        modes: the client's stream modes (decides how `messages` output is shaped).
        thread_key / thread_id: the checkpointer's key for the thread, rewritten to the
            client's thread id wherever LangGraph puts it (message metadata, debug
            events), so the owner namespace never reaches a client.
    """

    def __init__(self, modes: Iterable[str], *, request_id: str,
                 thread_key: str | None = None, thread_id: str | None = None) -> None:
        wanted = set(modes)
        self._tuples = "messages-tuple" in wanted
        self._accumulated = "messages" in wanted
        self._request_id = request_id
        self._alias = None
        if thread_key and thread_id:
            self._alias = (thread_key.encode(), thread_id.encode())
        # message id -> the chunks added up so far (for `messages/partial`)
        self._partial: dict[str, BaseMessageChunk] = {}
        self._seen: set[str] = set()

    def __call__(self, event: RunEvent) -> Iterator[tuple[str, bytes]]:
        """Zero or more (event name, one-line JSON) pairs for one run event."""
        suffix = "|" + "|".join(event.namespace) if event.namespace else ""
        if event.event == "messages":
            yield from self._messages(event.data, suffix)
        elif event.event == "metadata":
            yield "metadata", dumps({"run_id": event.data["run_id"], "attempt": 1})
        elif isinstance(event.data, RunError):
            error = event.data
            yield "error", dumps({"error": error.code, "message": error.message,
                                  "retryable": error.retryable,
                                  "request_id": self._request_id})
        else:
            yield event.event + suffix, self._dumps(event.data)

    def _dumps(self, value: Any) -> bytes:
        data = dumps(value)
        if self._alias is not None:
            data = data.replace(*self._alias)
        return data

    def _messages(self, data: Any, suffix: str) -> Iterator[tuple[str, bytes]]:
        message, metadata = data
        if self._tuples:
            yield "messages" + suffix, self._dumps([message, metadata])
        if not self._accumulated:
            return
        message_id = getattr(message, "id", None) or ""
        if message_id not in self._seen:
            self._seen.add(message_id)
            yield "messages/metadata" + suffix, self._dumps({message_id: {"metadata": metadata}})
        if isinstance(message, BaseMessageChunk):
            so_far = self._partial.get(message_id)
            so_far = message if so_far is None else so_far + message
            self._partial[message_id] = so_far
            yield "messages/partial" + suffix, self._dumps([_as_message(so_far)])
        else:
            self._partial.pop(message_id, None)
            yield "messages/complete" + suffix, self._dumps([message])

    def frame(self, name: str, data: bytes, event_id: str | None = None) -> bytes:
        return encode_event(name, data, event_id)


def _as_message(chunk: BaseMessageChunk) -> BaseMessage:
    # `type: "ai"` rather than "AIMessageChunk", as the official server sends partials.
    return message_chunk_to_message(chunk)
