"""Background runs through the official client: create, get, list, join, join a stream,
cancel, delete."""

from __future__ import annotations

import time
from typing import Any

import pytest
from langgraph_sdk.errors import ConflictError, NotFoundError

from tests.agent.conftest import AgentServer

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}


def _wait_for(predicate: Any, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_background_run_then_join(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "demo", input=HELLO, metadata={"job": 7})
    assert run["thread_id"] == thread_id and run["status"] in ("pending", "running")
    assert run["metadata"] == {"job": 7}
    values = client.runs.join(thread_id, run["run_id"])
    assert "I have seen 1 message" in values["messages"][-1]["content"]
    fetched = client.runs.get(thread_id, run["run_id"])
    assert fetched["status"] == "success"
    assert [r["run_id"] for r in client.runs.list(thread_id)] == [run["run_id"]]
    assert client.threads.get(thread_id)["status"] == "idle"


def test_join_stream_replays_a_background_run(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "demo", input=HELLO,
                             stream_mode=["messages-tuple", "values"])
    parts = list(client.runs.join_stream(thread_id, run["run_id"], last_event_id="-1"))
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end"
    assert "messages" in events and "values" in events
    only_values = list(client.runs.join_stream(thread_id, run["run_id"], last_event_id="-1",
                                               stream_mode="values"))
    assert {p.event for p in only_values} == {"metadata", "values", "end"}


def test_cancel_a_running_background_run(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, "slow", input={"steps": []})
    # Step "a" committed; "b" (a 60 s node) running.
    _wait_for(lambda: client.threads.get_state(thread_id)["next"] == ["b"])
    with pytest.raises(ConflictError):
        client.runs.delete(thread_id, run["run_id"])
    client.runs.cancel(thread_id, run["run_id"], wait=True)
    assert client.runs.get(thread_id, run["run_id"])["status"] == "interrupted"
    assert client.threads.get(thread_id)["status"] == "idle"
    state = client.threads.get_state(thread_id)
    assert state["values"]["steps"] == ["a"] and state["next"] == ["b"]
    client.runs.delete(thread_id, run["run_id"])
    with pytest.raises(NotFoundError):
        client.runs.get(thread_id, run["run_id"])


def test_runs_of_another_owner_are_invisible(agent: AgentServer) -> None:
    alice, carol = agent.client("alice"), agent.client("carol")
    thread_id = alice.threads.create()["thread_id"]
    run = alice.runs.create(thread_id, "demo", input=HELLO)
    alice.runs.join(thread_id, run["run_id"])
    for call in (lambda: carol.runs.get(thread_id, run["run_id"]),
                 lambda: carol.runs.list(thread_id),
                 lambda: carol.runs.cancel(thread_id, run["run_id"]),
                 lambda: list(carol.runs.join_stream(thread_id, run["run_id"])),
                 lambda: carol.runs.delete(thread_id, run["run_id"])):
        with pytest.raises(NotFoundError):
            call()


def test_deleting_the_thread_deletes_its_runs(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create(thread_id="short-lived")["thread_id"]
    run = client.runs.create(thread_id, "demo", input=HELLO)
    client.runs.join(thread_id, run["run_id"])
    client.threads.delete(thread_id)
    client.threads.create(thread_id="short-lived")
    assert client.runs.list(thread_id) == []


def _latest_run_status(client: Any, thread_id: str) -> str:
    return str(client.runs.list(thread_id)[0]["status"])


def test_hanging_up_cancels_the_run_by_default(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    stream = client.runs.stream(thread_id, "slow", input={"steps": []}, stream_mode="custom")
    assert next(stream).event == "metadata"
    assert next(stream).data == {"stage": "a"}
    # Hang up once step "a" is committed and "b" (a 60 s node) is running.
    _wait_for(lambda: client.threads.get_state(thread_id)["next"] == ["b"])
    assert _latest_run_status(client, thread_id) == "running"
    stream.close()
    _wait_for(lambda: _latest_run_status(client, thread_id) == "interrupted")
    _wait_for(lambda: client.threads.get(thread_id)["status"] == "idle")
    assert client.threads.get_state(thread_id)["values"]["steps"] == ["a"]


def test_on_disconnect_continue_keeps_the_run_going(agent_server: Any) -> None:
    agent = agent_server(demo={"token_delay_ms": 30, "reply_tokens": 20})
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    stream = client.runs.stream(thread_id, "demo", input=HELLO, on_disconnect="continue",
                                stream_mode="messages-tuple")
    assert next(stream).event == "metadata"
    stream.close()
    _wait_for(lambda: _latest_run_status(client, thread_id) == "success")
    messages = client.threads.get_state(thread_id)["values"]["messages"]
    assert "I have seen 1 message" in messages[-1]["content"]
