"""Runs through the official client: every stream mode, waits, stateless runs,
interrupts and resumes, failures, and the thread's status along the way."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from langgraph_sdk.errors import ConflictError, UnprocessableEntityError

from tests.agent.conftest import AgentServer, wait_status
from tests.support.graphs import SECRET

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}


def _events(parts: list[Any]) -> list[str]:
    return [part.event for part in parts]


def test_values_stream_starts_with_metadata_and_ends(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    created: list[Any] = []
    parts = list(client.runs.stream(thread_id, "demo", input=HELLO,
                                    on_run_created=created.append))
    events = _events(parts)
    assert events[0] == "metadata" and events[-1] == "end"
    assert set(events[1:-1]) == {"values"}
    run_id = parts[0].data["run_id"]
    assert created and created[0]["run_id"] == run_id and created[0]["thread_id"] == thread_id
    final = parts[-2].data["messages"]
    assert [m["type"] for m in final] == ["human", "ai"]
    assert "I have seen 1 message" in final[-1]["content"]


def test_second_turn_sees_the_first(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    client.runs.wait(thread_id, "demo", input=HELLO)
    values = client.runs.wait(thread_id, "demo", input=HELLO)
    assert "I have seen 3 messages" in values["messages"][-1]["content"]


def test_messages_mode_sends_metadata_then_growing_partials(agent: AgentServer) -> None:
    client = agent.client()
    parts = list(client.runs.stream(None, "demo", input=HELLO, stream_mode="messages"))
    partials = [p.data for p in parts if p.event == "messages/partial"]
    metadata = [p.data for p in parts if p.event == "messages/metadata"]
    assert len(partials) > 3
    texts = [partial[0]["content"] for partial in partials]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert partials[-1][0]["type"] == "ai" and "I have seen 1 message" in texts[-1]
    message_id = partials[-1][0]["id"]
    assert any(message_id in m and m[message_id]["metadata"]["langgraph_node"] == "agent"
               for m in metadata)
    assert _events(parts).index("messages/metadata") < _events(parts).index("messages/partial")


def test_messages_tuple_mode_sends_chunks_with_metadata(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(thread_id, "demo", input=HELLO,
                                    stream_mode="messages-tuple"))
    tuples = [p.data for p in parts if p.event == "messages"]
    assert len(tuples) > 3
    chunk, metadata = tuples[0]
    assert chunk["type"] == "AIMessageChunk"
    assert metadata["langgraph_node"] == "agent"
    assert metadata["thread_id"] == thread_id  # the client's id, not the storage key
    text = "".join(c["content"] for c, _ in tuples)
    assert "I have seen 1 message" in text


def test_updates_custom_and_debug_together(agent: AgentServer) -> None:
    client = agent.client()
    parts = list(client.runs.stream(None, "demo", input={"messages": [
        {"role": "user", "content": "use a tool please"}]},
        stream_mode=["updates", "custom", "debug"]))
    events = set(_events(parts))
    assert {"metadata", "updates", "custom", "debug", "end"} <= events
    updates = [next(iter(p.data)) for p in parts if p.event == "updates"]
    assert updates == ["agent", "tools", "agent"]
    stages = [p.data.get("stage") for p in parts if p.event == "custom"]
    assert "tool" in stages and "thinking" in stages
    debug_types = {p.data["type"] for p in parts if p.event == "debug"}
    assert {"checkpoint", "task", "task_result"} <= debug_types


def test_subgraph_events_carry_their_namespace(agent: AgentServer) -> None:
    client = agent.client()
    parts = list(client.runs.stream(None, "nested", input={"steps": []},
                                    stream_mode=["updates", "custom"], stream_subgraphs=True))
    namespaced = [p for p in parts if "|" in p.event]
    assert any(p.event.startswith("updates|child:") and "inner" in p.data for p in namespaced)
    assert any(p.event.startswith("custom|child:") and p.data == {"stage": "inner"}
               for p in namespaced)
    plain = list(client.runs.stream(None, "nested", input={"steps": []},
                                    stream_mode="updates"))
    assert not any("|" in p.event for p in plain)


def test_stateless_runs_leave_no_thread(agent: AgentServer) -> None:
    client = agent.client()
    values = client.runs.wait(None, "demo", input=HELLO)
    assert values["messages"][-1]["type"] == "ai"
    list(client.runs.stream(None, "demo", input=HELLO))
    assert client.threads.search(limit=100) == []


def test_interrupt_then_resume_with_command(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(thread_id, "approval", input={"steps": []}))
    last_values = [p.data for p in parts if p.event == "values"][-1]
    interrupt = last_values["__interrupt__"][0]
    assert interrupt["value"] == {"question": "approve?", "steps_so_far": ["a"]}
    thread = client.threads.get(thread_id)
    assert thread["status"] == "interrupted"
    assert next(iter(thread["interrupts"].values()))[0]["value"]["question"] == "approve?"
    assert client.threads.get_state(thread_id)["next"] == ["ask"]

    values = client.runs.wait(thread_id, "approval", command={"resume": "yes"})
    assert values["steps"] == ["a", "answer:yes", "done"]
    assert client.threads.get(thread_id)["status"] == "idle"


def test_interrupt_before_a_node_then_continue(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    client.runs.wait(thread_id, "nested", input={"steps": []}, interrupt_before=["child"])
    assert client.threads.get_state(thread_id)["next"] == ["child"]
    assert client.threads.get(thread_id)["status"] == "interrupted"
    values = client.runs.wait(thread_id, "nested", input=None)
    # The subgraph returns its whole state, which the parent's reducer appends.
    assert values["steps"][-1] == "inner"
    assert client.threads.get_state(thread_id)["next"] == []


def test_a_failing_graph_reports_a_safe_error(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(thread_id, "failing", input={"steps": []}))
    errors = [p.data for p in parts if p.event == "error"]
    assert errors and errors[0]["error"] == "graph_error"
    assert SECRET not in repr(parts)
    assert client.threads.get(thread_id)["status"] == "error"
    with pytest.raises(Exception, match="graph_error") as raised:
        client.runs.wait(thread_id, "failing", input={"steps": []})
    assert SECRET not in str(raised.value)


def test_a_second_run_on_a_busy_thread_is_refused(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    stream = client.runs.stream(thread_id, "slow", input={"steps": []}, stream_mode="custom")
    first = next(stream)
    assert first.event == "metadata"
    assert next(stream).data == {"stage": "a"}
    assert client.threads.get(thread_id)["status"] == "busy"
    with pytest.raises(ConflictError):
        list(client.runs.stream(thread_id, "slow", input={"steps": []}))
    assert wait_status(lambda: client.runs.wait(thread_id, "slow", input={"steps": []})) == 409
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(10)


def test_runs_refuse_what_they_cannot_honour(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    assert wait_status(lambda: client.runs.wait(thread_id, "no-such-graph", input=HELLO)) == 422
    assert wait_status(lambda: client.runs.wait(
        thread_id, "demo", input=HELLO, webhook="http://169.254.169.254/")) == 422
    assert wait_status(lambda: client.runs.wait(
        thread_id, "demo", input=HELLO, interrupt_before=["nope"])) == 422
    with pytest.raises(UnprocessableEntityError):
        list(client.runs.stream(thread_id, "demo", input=HELLO, stream_mode="events"))


def test_if_not_exists_create(agent: AgentServer) -> None:
    client = agent.client()
    values = client.runs.wait("fresh-thread", "demo", input=HELLO, if_not_exists="create")
    assert values["messages"][-1]["type"] == "ai"
    assert client.threads.get("fresh-thread")["metadata"]["graph_id"] == "demo"


def test_config_reaches_the_graph_but_not_the_thread_key(agent: AgentServer) -> None:
    """Client configurable values pass through; reserved keys cannot redirect the run."""
    alice, carol = agent.client("alice"), agent.client("carol")
    victim = carol.threads.create()["thread_id"]
    carol.runs.wait(victim, "demo", input=HELLO)
    thread_id = alice.threads.create()["thread_id"]
    alice.runs.wait(thread_id, "demo", input=HELLO,
                    config={"configurable": {"thread_id": victim, "checkpoint_ns": "x"},
                            "tags": ["t1"]},
                    metadata={"origin": "test"})
    assert len(carol.threads.get_state(victim)["values"]["messages"]) == 2
    state = alice.threads.get_state(thread_id)
    assert len(state["values"]["messages"]) == 2
    assert state["metadata"]["origin"] == "test"
