"""Turn `module:attr` specs into compiled graphs bound to our checkpointer."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from service.settings import Settings


class GraphLoadError(Exception):
    """A graph spec could not be turned into a graph; the message says why, on one line."""


class UnknownGraph(LookupError):
    """A request named a graph that is not served."""


def import_spec(name: str, spec: str) -> Any:
    """Import `module:attr` (attr may be dotted), with a clear error on failure."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphLoadError(
            f"graph {name!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise GraphLoadError(
                f"graph {name!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return target


def _kind_error(name: str, spec: str, obj: Any, *, from_factory: bool = False) -> GraphLoadError:
    what = "returned" if from_factory else "is"
    return GraphLoadError(
        f"graph {name!r}: {spec} {what} a {type(obj).__name__}; expected a compiled graph, "
        "an uncompiled StateGraph, or a factory returning one of those"
    )


def check_spec(name: str, spec: str) -> None:
    """Import and type-check a spec without building it (start-up preflight)."""
    obj = import_spec(name, spec)
    if not isinstance(obj, Pregel | StateGraph) and not callable(obj):
        raise _kind_error(name, spec, obj)


async def build_graph(
    name: str, spec: str, checkpointer: BaseCheckpointSaver[Any], settings: Settings
) -> Pregel[Any, Any, Any, Any]:
    """Resolve a spec to a compiled graph that checkpoints to `checkpointer`.

    A factory is called with no arguments, or with the Settings if it takes one; it may
    be async. Whatever checkpointer a compiled graph came with is replaced by ours, so
    threads persist where graphgate's settings say.
    """
    obj = import_spec(name, spec)
    if not isinstance(obj, Pregel | StateGraph) and callable(obj):
        try:
            takes_settings = len(inspect.signature(obj).parameters) >= 1
        except (TypeError, ValueError):
            takes_settings = False
        try:
            obj = obj(settings) if takes_settings else obj()
            if inspect.isawaitable(obj):
                obj = await obj
        except Exception as exc:
            raise GraphLoadError(
                f"graph {name!r}: factory {spec} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(obj, Pregel | StateGraph):
            raise _kind_error(name, spec, obj, from_factory=True)
    if isinstance(obj, StateGraph):
        return obj.compile(checkpointer=checkpointer, name=name)
    if isinstance(obj, Pregel):
        return obj.copy(update={"checkpointer": checkpointer, "name": name})
    raise _kind_error(name, spec, obj)


@dataclass(frozen=True)
class GraphRegistry:
    """The served graphs, by name, and which one requests get by default."""

    graphs: Mapping[str, Pregel[Any, Any, Any, Any]]
    default: str

    def get(self, name: str | None) -> tuple[str, Pregel[Any, Any, Any, Any]]:
        key = name or self.default
        graph = self.graphs.get(key)
        if graph is None:
            raise UnknownGraph(key)
        return key, graph


async def load_graphs(
    settings: Settings, checkpointer: BaseCheckpointSaver[Any]
) -> GraphRegistry:
    graphs = {
        name: await build_graph(name, spec, checkpointer, settings)
        for name, spec in settings.graph_specs.items()
    }
    return GraphRegistry(graphs=graphs, default=settings.default_graph_name)
