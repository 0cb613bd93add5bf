"""Graph loading: specs of every kind become graphs bound to our checkpointer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel

from service.graphs.loader import (
    GraphLoadError,
    GraphRegistry,
    UnknownGraph,
    build_graph,
    check_spec,
    import_spec,
    load_graphs,
)
from service.settings import Settings
from tests.graphs import sample_graphs

MODULE = "tests.graphs.sample_graphs"


def _dev() -> Settings:
    return Settings(env="development")


def spec(attr: str) -> str:
    return f"{MODULE}:{attr}"


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


async def build_and_run(
    attr: str, settings: Settings | None = None
) -> tuple[Pregel[Any, Any, Any, Any], InMemorySaver, dict[str, Any]]:
    saver = InMemorySaver()
    graph = await build_graph(attr, spec(attr), saver, settings or _dev())
    result = await graph.ainvoke({"steps": []}, config("t-1"))
    return graph, saver, result


@pytest.mark.parametrize(
    ("attr", "source"),
    [
        ("compiled", "compiled"),
        ("builder", "builder"),
        ("sync_factory", "sync_factory"),
        ("async_factory", "async_factory"),
        ("Namespace.graph", "dotted"),
    ],
)
def test_build_graph_binds_our_checkpointer_and_runs(attr: str, source: str) -> None:
    """Every supported kind of spec becomes a runnable graph checkpointing to our saver."""
    graph, saver, result = asyncio.run(build_and_run(attr))
    assert isinstance(graph, Pregel)
    assert graph.checkpointer is saver
    assert result == {"steps": ["step"], "source": source}
    assert saver.get_tuple(config("t-1")) is not None


def test_build_graph_passes_settings_to_a_factory_that_takes_them() -> None:
    """A one-parameter factory is called with the Settings."""
    settings = _dev()
    sample_graphs.SEEN_SETTINGS.clear()
    graph, saver, result = asyncio.run(build_and_run("settings_factory", settings))
    seen = sample_graphs.SEEN_SETTINGS
    assert seen == [settings]
    assert graph.checkpointer is saver
    assert result["source"] == "settings_factory:development"


def test_build_graph_replaces_a_compiled_graphs_own_checkpointer() -> None:
    """A compiled graph's own checkpointer is neither used nor modified."""
    graph, saver, _ = asyncio.run(build_and_run("compiled"))
    assert graph.checkpointer is saver
    assert graph is not sample_graphs.compiled
    assert sample_graphs.compiled.checkpointer is sample_graphs.OWN_SAVER
    assert sample_graphs.OWN_SAVER.get_tuple(config("t-1")) is None


def test_builder_is_compiled_under_the_graph_name() -> None:
    """An uncompiled StateGraph is compiled with the served name."""
    saver = InMemorySaver()
    graph = asyncio.run(build_graph("my-graph", spec("builder"), saver, _dev()))
    assert graph.name == "my-graph"


def test_threads_persist_across_calls_in_our_checkpointer() -> None:
    """A second run on the same thread continues from the state in our saver."""

    async def run_twice() -> dict[str, Any]:
        saver = InMemorySaver()
        graph = await build_graph("b", spec("builder"), saver, _dev())
        await graph.ainvoke({"steps": []}, config("t"))
        return await graph.ainvoke({"steps": []}, config("t"))

    assert asyncio.run(run_twice())["steps"] == ["step", "step"]


# --- errors ----------------------------------------------------------------------------------


def test_missing_module_is_a_graph_load_error() -> None:
    """A module that cannot be imported gives a one-line GraphLoadError naming it."""
    with pytest.raises(GraphLoadError) as excinfo:
        asyncio.run(
            build_graph("g", "tests.graphs.no_such_module:graph", InMemorySaver(), _dev())
        )
    message = str(excinfo.value)
    assert "graph 'g'" in message
    assert "cannot import module 'tests.graphs.no_such_module'" in message
    assert "ModuleNotFoundError" in message
    assert "\n" not in message


def test_missing_attribute_is_a_graph_load_error() -> None:
    """A module without the named attribute gives a GraphLoadError naming both."""
    with pytest.raises(
        GraphLoadError,
        match=rf"graph 'g': module '{MODULE}' has no attribute 'no_such_graph'",
    ):
        asyncio.run(build_graph("g", spec("no_such_graph"), InMemorySaver(), _dev()))


def test_missing_dotted_attribute_reports_the_whole_path() -> None:
    """A missing part of a dotted attribute path reports the whole path."""
    with pytest.raises(GraphLoadError, match=r"has no attribute 'Namespace\.missing'"):
        import_spec("g", spec("Namespace.missing"))


def test_wrong_type_attribute_is_a_graph_load_error() -> None:
    """An attribute that is neither a graph nor callable gives a GraphLoadError with its type."""
    with pytest.raises(GraphLoadError) as excinfo:
        asyncio.run(build_graph("g", spec("not_a_graph"), InMemorySaver(), _dev()))
    message = str(excinfo.value)
    assert f"{spec('not_a_graph')} is a int" in message
    assert "expected a compiled graph" in message


@pytest.mark.parametrize(
    ("attr", "type_name"), [("returns_int", "int"), ("async_returns_str", "str")]
)
def test_factory_returning_wrong_type_is_a_graph_load_error(attr: str, type_name: str) -> None:
    """A factory (sync or async) returning a non-graph gives a GraphLoadError saying so."""
    with pytest.raises(GraphLoadError, match=rf"{attr} returned a {type_name}; expected"):
        asyncio.run(build_graph("g", spec(attr), InMemorySaver(), _dev()))


# --- check_spec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attr",
    [
        "compiled",
        "builder",
        "sync_factory",
        "settings_factory",
        "async_factory",
        "Namespace.graph",
        "returns_int",
    ],
)
def test_check_spec_accepts_graphs_and_callables(attr: str) -> None:
    """check_spec accepts graphs and any callable without calling it."""
    sample_graphs.SEEN_SETTINGS.clear()
    check_spec("g", spec(attr))
    seen = sample_graphs.SEEN_SETTINGS
    assert seen == []


def test_check_spec_rejects_a_non_graph_value() -> None:
    """check_spec rejects an attribute that is neither a graph nor callable."""
    with pytest.raises(GraphLoadError, match="is a int"):
        check_spec("g", spec("not_a_graph"))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("tests.graphs.no_such_module:x", "cannot import module"),
        (f"{MODULE}:absent", "has no attribute 'absent'"),
    ],
)
def test_check_spec_reports_import_problems(value: str, fragment: str) -> None:
    """check_spec reports missing modules and attributes as GraphLoadError."""
    with pytest.raises(GraphLoadError, match=fragment):
        check_spec("g", value)


# --- registry -----------------------------------------------------------------------------------


def make_registry() -> GraphRegistry:
    saver = InMemorySaver()

    async def build() -> GraphRegistry:
        settings = Settings(
            env="development",
            graphs={"first": spec("builder"), "second": spec("sync_factory")},
            default_graph="second",
        )
        return await load_graphs(settings, saver)

    return asyncio.run(build())


def test_load_graphs_builds_every_configured_graph() -> None:
    """load_graphs builds each configured graph and records the default."""
    registry = make_registry()
    assert set(registry.graphs) == {"first", "second"}
    assert registry.default == "second"


def test_registry_get_without_a_name_returns_the_default() -> None:
    """get(None) and get("") return the default graph with its name."""
    registry = make_registry()
    assert registry.get(None) == ("second", registry.graphs["second"])
    assert registry.get("") == ("second", registry.graphs["second"])


def test_registry_get_by_name() -> None:
    """get(name) returns that graph."""
    registry = make_registry()
    assert registry.get("first") == ("first", registry.graphs["first"])


def test_registry_get_unknown_name_raises_unknown_graph() -> None:
    """get() of a graph that is not served raises UnknownGraph carrying the name."""
    registry = make_registry()
    with pytest.raises(UnknownGraph) as excinfo:
        registry.get("nope")
    assert excinfo.value.args == ("nope",)
    assert isinstance(excinfo.value, LookupError)
