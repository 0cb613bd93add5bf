"""Threads through the official client: create, get, update, search, delete, state and
history, each inside the caller's own thread space."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from tests.agent.conftest import AgentServer, wait_status

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}


def test_create_get_update_delete(agent: AgentServer) -> None:
    client = agent.client()
    thread = client.threads.create(metadata={"team": "search", "n": 1})
    thread_id = thread["thread_id"]
    assert uuid.UUID(thread_id)
    assert thread["status"] == "idle" and thread["metadata"] == {"team": "search", "n": 1}
    fetched = client.threads.get(thread_id)
    assert fetched["thread_id"] == thread_id and fetched["metadata"]["team"] == "search"
    updated = client.threads.update(thread_id, metadata={"n": 2, "extra": None})
    assert updated["metadata"] == {"team": "search", "n": 2, "extra": None}
    client.threads.delete(thread_id)
    with pytest.raises(NotFoundError):
        client.threads.get(thread_id)


def test_create_with_id_and_if_exists(agent: AgentServer) -> None:
    client = agent.client()
    client.threads.create(thread_id="my-thread", metadata={"v": 1})
    with pytest.raises(ConflictError):
        client.threads.create(thread_id="my-thread")
    again = client.threads.create(thread_id="my-thread", if_exists="do_nothing",
                                  metadata={"v": 2})
    assert again["metadata"] == {"v": 1}


def test_search_by_metadata_and_status(agent: AgentServer) -> None:
    client = agent.client()
    ids = [client.threads.create(metadata={"team": team})["thread_id"]
           for team in ("a", "b", "a")]
    found = client.threads.search(metadata={"team": "a"})
    assert {t["thread_id"] for t in found} == {ids[0], ids[2]}
    client.runs.wait(ids[1], "demo", input=HELLO)
    idle = client.threads.search(status="idle", limit=100)
    assert {t["thread_id"] for t in idle} == set(ids)
    ran = client.threads.search(metadata={"graph_id": "demo"})
    assert [t["thread_id"] for t in ran] == [ids[1]]
    assert ran[0]["values"]["messages"][0]["content"] == "hello"
    assert client.threads.count(metadata={"team": "a"}) == 2


def test_another_owner_sees_nothing(agent: AgentServer) -> None:
    alice, carol = agent.client("alice"), agent.client("carol")
    thread_id = alice.threads.create(metadata={"secret": "alice"})["thread_id"]
    alice.runs.wait(thread_id, "demo", input=HELLO)
    assert carol.threads.search(limit=100) == []
    for call in (lambda: carol.threads.get(thread_id),
                 lambda: carol.threads.update(thread_id, metadata={"x": 1}),
                 lambda: carol.threads.get_state(thread_id),
                 lambda: carol.threads.get_history(thread_id),
                 lambda: carol.threads.update_state(thread_id, {"messages": []}),
                 lambda: carol.threads.delete(thread_id),
                 lambda: list(carol.runs.stream(thread_id, "demo", input=HELLO))):
        with pytest.raises(NotFoundError):
            call()
    assert wait_status(lambda: carol.runs.wait(thread_id, "demo", input=HELLO)) == 404
    assert alice.threads.get(thread_id)["metadata"]["secret"] == "alice"


def test_state_history_and_update_state(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    client.runs.wait(thread_id, "demo", input=HELLO)
    state = client.threads.get_state(thread_id)
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"]
    assert state["next"] == [] and state["checkpoint"]["thread_id"] == thread_id
    history = client.threads.get_history(thread_id, limit=3)
    assert len(history) == 3
    assert history[0]["checkpoint_id"] == state["checkpoint_id"]
    assert history[1]["checkpoint_id"] == state["parent_checkpoint_id"]
    older = client.threads.get_state(thread_id, checkpoint_id=history[2]["checkpoint_id"])
    assert len(older["values"].get("messages", [])) < 2

    result = client.threads.update_state(
        thread_id, {"messages": [{"role": "user", "content": "edited in"}]}, as_node="agent")
    assert result["checkpoint"]["thread_id"] == thread_id
    after = client.threads.get_state(thread_id)
    assert after["values"]["messages"][-1]["content"] == "edited in"
    assert after["checkpoint_id"] == result["checkpoint"]["checkpoint_id"]


def test_storage_keys_never_reach_the_client(agent: AgentServer) -> None:
    """The owner namespace appears nowhere: state, history, threads, stream events."""
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(thread_id, "demo", input=HELLO,
                                    stream_mode=["debug", "messages-tuple", "values"]))
    bodies = [repr(p.data) for p in parts]
    bodies.append(repr(client.threads.get_history(thread_id, limit=10)))
    bodies.append(repr(client.threads.get_state(thread_id)))
    bodies.append(repr(client.threads.search()))
    assert any(thread_id in body for body in bodies)
    assert not any(f".{thread_id}" in body for body in bodies)


def test_unstorable_values_are_the_clients_error(agent: AgentServer) -> None:
    """NUL characters and NaN fit no store: 422 on every store, never a 500."""
    client = agent.client()
    with pytest.raises(UnprocessableEntityError):
        client.threads.create(metadata={"name": "a\u0000b"})
    thread_id = client.threads.create()["thread_id"]
    headers = {"X-API-Key": agent.keyring["alice"].key, "Content-Type": "application/json"}
    for body in (b'{"metadata": {"x": NaN}}',):
        patched = httpx.patch(f"{agent.url}/threads/{thread_id}", content=body, headers=headers)
        assert patched.status_code == 422
    run = httpx.post(f"{agent.url}/threads/{thread_id}/runs/wait", headers=headers,
                     content=b'{"assistant_id": "demo", "input": {"messages": []},'
                             b' "context": {"x": NaN}}')
    assert run.status_code == 422 and run.json()["request_id"]
    assert client.threads.get(thread_id)["status"] == "idle"
