"""Assistants through the official client: every served graph is an assistant."""

from __future__ import annotations

import uuid

import httpx
import pytest
from langgraph_sdk.errors import NotFoundError

from tests.agent.conftest import AgentServer
from tests.conftest import TEST_GRAPHS


def test_search_lists_every_graph_with_the_official_default_ids(agent: AgentServer) -> None:
    """Ids are the official server's UUID5 of the graph name, so stored ids stay valid."""
    assistants = agent.client().assistants.search(limit=100)
    by_graph = {a["graph_id"]: a for a in assistants}
    assert set(by_graph) == set(TEST_GRAPHS)
    for name, assistant in by_graph.items():
        assert assistant["assistant_id"] == str(uuid.uuid5(uuid.NAMESPACE_URL, name))
        assert assistant["name"] == name
        assert assistant["version"] == 1
        assert assistant["metadata"] == {"created_by": "system"}


def test_search_filters_and_pages(agent: AgentServer) -> None:
    client = agent.client()
    assert [a["graph_id"] for a in client.assistants.search(graph_id="demo")] == ["demo"]
    first = client.assistants.search(limit=2, offset=0)
    second = client.assistants.search(limit=2, offset=2)
    assert len(first) == len(second) == 2
    assert not {a["graph_id"] for a in first} & {a["graph_id"] for a in second}
    response = httpx.post(f"{agent.url}/assistants/search", json={"limit": 2},
                          headers={"X-API-Key": agent.keyring["alice"].key})
    assert response.headers["x-pagination-total"] == str(len(TEST_GRAPHS))
    assert response.headers["x-pagination-next"] == "2"


def test_get_by_id_or_graph_name(agent: AgentServer) -> None:
    client = agent.client()
    demo_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "demo"))
    assert client.assistants.get(demo_id)["graph_id"] == "demo"
    assert client.assistants.get("demo")["assistant_id"] == demo_id
    with pytest.raises(NotFoundError):
        client.assistants.get(str(uuid.uuid4()))


def test_graph_structure_and_schemas(agent: AgentServer) -> None:
    client = agent.client()
    graph = client.assistants.get_graph("demo")
    node_ids = {node["id"] for node in graph["nodes"]}
    assert {"agent", "tools", "__start__"} <= node_ids
    assert {"source": "__start__", "target": "agent"} in [
        {"source": e["source"], "target": e["target"]} for e in graph["edges"]]
    schemas = client.assistants.get_schemas("demo")
    assert schemas["graph_id"] == "demo"
    assert "messages" in schemas["input_schema"]["properties"]
    assert "messages" in schemas["state_schema"]["properties"]


def test_assistants_need_credentials(agent: AgentServer) -> None:
    response = httpx.post(f"{agent.url}/assistants/search", json={})
    assert response.status_code == 401
    assert httpx.get(f"{agent.url}/ok").json() == {"ok": True}
    info = httpx.get(f"{agent.url}/info", headers={"X-API-Key": agent.keyring["alice"].key})
    assert info.status_code == 200 and info.json()["server"] == "graphgate"
