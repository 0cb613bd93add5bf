"""Graphs the tests serve next to the demo: slow, failing, silent, odd values."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import START, StateGraph
from langgraph.types import interrupt

# Observations made inside the server process (thread servers share this module).
EVENTS: list[str] = []
SECRET = "password=hunter2 SELECT secret FROM vault"


class Steps(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]
    messages: list[Any]


async def _a(state: Steps) -> dict[str, Any]:
    get_stream_writer()({"stage": "a"})
    return {"steps": ["a"]}


async def _b(state: Steps) -> dict[str, Any]:
    get_stream_writer()({"stage": "b-started"})
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        EVENTS.append("b-cancelled")
        raise
    return {"steps": ["b"]}


def _two_steps(second: Any) -> StateGraph[Any]:
    builder: StateGraph[Any] = StateGraph(Steps)
    builder.add_node("a", _a)
    builder.add_node("b", second)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    return builder


slow = _two_steps(_b)


async def _fail(state: Steps) -> dict[str, Any]:
    raise RuntimeError(SECRET)


failing = _two_steps(_fail)


async def _silent(state: Steps) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    return {"steps": ["silent"]}


silent = _two_steps(_silent)


class Opaque:
    __slots__ = ()

    def __repr__(self) -> str:
        return SECRET


async def _odd(state: Steps) -> dict[str, Any]:
    get_stream_writer()({"big": 2**70, "set": {1, 2}, "bytes": b"\x00\xff", "opaque": Opaque(),
                         1: "non-string key"})
    return {"steps": ["odd"]}


odd = _two_steps(_odd)


async def _flood(state: Steps) -> dict[str, Any]:
    # More output than socket buffers hold (for a client that never reads), then a wait
    # that only cancellation ends. LangGraph queues writes without bound, so the node
    # itself is not slowed by a slow client; only the stream is.
    write = get_stream_writer()
    for i in range(10_000):
        write({"i": i, "pad": "x" * 1000})
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        EVENTS.append("flood-cancelled")
        raise
    return {"steps": ["flood"]}


flood = _two_steps(_flood)


async def _stubborn(state: Steps) -> dict[str, Any]:
    # Ignores cancellation for a while, as a node stuck in a blocking client call would.
    get_stream_writer()({"stage": "b-started"})
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        EVENTS.append("stubborn-cancelled")
        await asyncio.sleep(1.5)
        EVENTS.append("stubborn-done")
        raise
    return {"steps": ["stubborn"]}


stubborn = _two_steps(_stubborn)


async def _ask(state: Steps) -> dict[str, Any]:
    # Pauses the run until a client resumes it with Command(resume=...).
    answer = interrupt({"question": "approve?", "steps_so_far": state.get("steps", [])})
    return {"steps": [f"answer:{answer}"]}


async def _done(state: Steps) -> dict[str, Any]:
    return {"steps": ["done"]}


def _approval() -> StateGraph[Any]:
    builder: StateGraph[Any] = StateGraph(Steps)
    builder.add_node("a", _a)
    builder.add_node("ask", _ask)
    builder.add_node("done", _done)
    builder.add_edge(START, "a")
    builder.add_edge("a", "ask")
    builder.add_edge("ask", "done")
    return builder


approval = _approval()


async def _inner(state: Steps) -> dict[str, Any]:
    get_stream_writer()({"stage": "inner"})
    return {"steps": ["inner"]}


def _nested() -> StateGraph[Any]:
    child: StateGraph[Any] = StateGraph(Steps)
    child.add_node("inner", _inner)
    child.add_edge(START, "inner")
    builder: StateGraph[Any] = StateGraph(Steps)
    builder.add_node("a", _a)
    builder.add_node("child", child.compile())
    builder.add_edge(START, "a")
    builder.add_edge("a", "child")
    return builder


nested = _nested()
