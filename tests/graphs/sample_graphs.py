"""Graph specs of every kind for the loader tests (`tests.graphs.sample_graphs:<name>`)."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph

from service.settings import Settings


class Counter(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]
    source: str


def _builder(source: str) -> StateGraph[Any]:
    async def step(state: Counter) -> dict[str, Any]:
        return {"steps": ["step"], "source": source}

    builder: StateGraph[Any] = StateGraph(Counter)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    return builder


# A compiled graph that brings its own checkpointer (the loader must replace it).
OWN_SAVER = InMemorySaver()
compiled = _builder("compiled").compile(checkpointer=OWN_SAVER)

# An uncompiled builder.
builder = _builder("builder")


def sync_factory() -> StateGraph[Any]:
    """A zero-argument factory."""
    return _builder("sync_factory")


SEEN_SETTINGS: list[Settings] = []


def settings_factory(settings: Settings) -> StateGraph[Any]:
    """A factory that takes the Settings."""
    SEEN_SETTINGS.append(settings)
    return _builder(f"settings_factory:{settings.env}")


async def async_factory() -> Any:
    """An async factory returning a compiled graph."""
    return _builder("async_factory").compile()


# Wrong kinds.
not_a_graph = 42


def returns_int() -> int:
    """A factory that returns something that is not a graph."""
    return 7


async def async_returns_str() -> str:
    """An async factory that returns something that is not a graph."""
    return "nope"


class Namespace:
    """Holds a graph under a dotted attribute path."""

    graph = _builder("dotted")
