"""`/history` and `/state`: a thread's state (GET /v1/threads/{id}/state) as lines of text."""

from __future__ import annotations

from typing import Any

from service.chat.render import compact, content_text, json_text
from service.chat.text import one_line, printable

_SPEAKERS = {"human": "you", "ai": "assistant", "system": "system"}


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value and "content" in value


def message_lines(values: Any) -> list[str] | None:
    """The conversation in `values["messages"]`, one entry per message; None if the state
    has no message list (a graph with some other state)."""
    messages = values.get("messages") if isinstance(values, dict) else None
    if not isinstance(messages, list):
        return None
    lines = []
    for message in messages:
        if not _is_message(message):
            lines.append(f"? {compact(message)}")
            continue
        kind = str(message["type"])
        speaker = _SPEAKERS.get(kind, one_line(kind, 40))
        if kind == "tool":
            speaker = f"tool {one_line(str(message.get('name') or ''), 64)}".rstrip()
        text = printable(content_text(message["content"])).strip()
        if text:
            lines.append(f"{speaker}: {text}")
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                lines.append(f"{speaker}: [tool call] {one_line(str(call.get('name')), 64)} "
                             f"{json_text(call.get('args'))}")
    return lines


def _values_summary(values: Any) -> str:
    if not isinstance(values, dict):
        return compact(values)
    if not values:
        return "(empty)"
    parts = []
    for key, value in values.items():
        if isinstance(value, list) and value and all(_is_message(v) for v in value):
            parts.append(f"{key}: {len(value)} message{'s' if len(value) != 1 else ''}")
        else:
            parts.append(f"{key}: {compact(value, 120)}")
    return one_line("; ".join(parts), 1000)


def state_lines(state: Any) -> list[str]:
    """The parts of a state a person checks: where the thread is and what it holds."""
    if not isinstance(state, dict):
        return [compact(state, 1000)]
    found = state.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    checkpoint = one_line(str(state.get("checkpoint_id")), 64)
    where = [f"step {metadata['step']}"] if "step" in metadata else []
    if state.get("created_at"):
        where.append(one_line(str(state["created_at"]), 40))
    if where:
        checkpoint += f" ({', '.join(where)})"
    nxt = state.get("next")
    pending = ", ".join(one_line(str(n), 64) for n in nxt) if isinstance(nxt, list) else ""
    lines = [
        f"thread      {one_line(str(state.get('thread_id')), 64)}",
        f"graph       {one_line(str(metadata.get('graph_id', '?')), 64)}",
        f"checkpoint  {checkpoint}",
        f"next        {pending or '(nothing: the last run finished)'}",
        f"values      {_values_summary(state.get('values'))}",
    ]
    tasks = state.get("tasks")
    if isinstance(tasks, list) and tasks:
        names = [one_line(str(t.get("name")), 64) for t in tasks if isinstance(t, dict)]
        failed = sum(1 for t in tasks if isinstance(t, dict) and t.get("failed"))
        lines.append(f"tasks       {', '.join(names)}" + (f" ({failed} failed)" if failed else ""))
    interrupts = state.get("interrupts")
    if isinstance(interrupts, list) and interrupts:
        lines.append(f"interrupts  {len(interrupts)} pending")
    return lines
