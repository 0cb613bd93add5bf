"""Resumable streams: a stream cut mid-run is resumed by the official client's own
reconnect loop (Location + Last-Event-ID), with no event lost or repeated, also when
the reconnect reaches another replica."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.agent.conftest import AgentServer
from tests.support.cut_proxy import CutProxy

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}
SLOW_DEMO = {"token_delay_ms": 60, "reply_tokens": 30}


def _frames(body: bytes) -> list[tuple[int, bytes, bytes]]:
    """(id, event, data) of every event frame in an SSE body (heartbeats skipped)."""
    frames = []
    for block in body.split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.splitlines()
                      if not line.startswith(b":") and b": " in line)
        if b"event" in fields:
            frames.append((int(fields[b"id"]), fields[b"event"], fields[b"data"]))
    return frames


def _ids(response: httpx.Response) -> list[int]:
    return [frame[0] for frame in _frames(response.content)]


def test_sdk_reconnects_after_a_cut_with_nothing_lost_or_repeated(agent_server: Any) -> None:
    agent: AgentServer = agent_server(demo=SLOW_DEMO)
    with CutProxy(agent.server.port, cut_after=1500,
                  should_cut=lambda head: head.startswith(b"POST ")) as proxy:
        client = agent.client()
        client.http.client.base_url = httpx.URL(proxy.url)
        thread_id = client.threads.create()["thread_id"]
        parts = list(client.runs.stream(thread_id, "demo", input=HELLO,
                                        stream_mode=["messages-tuple", "values"],
                                        stream_resumable=True))
        assert proxy.cuts == 1
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end"
    run_id = parts[0].data["run_id"]
    # The whole run, replayed from the log, is what the client saw across the cut.
    replay = list(client.runs.join_stream(thread_id, run_id, last_event_id="-1"))
    assert [(p.event, p.data) for p in parts] == [(p.event, p.data) for p in replay]
    text = "".join(chunk["content"] for chunk, _ in (p.data for p in parts
                                                     if p.event == "messages"))
    assert "I have seen 1 message" in text


def test_stream_ids_are_consecutive_and_resume_after_the_given_id(agent: AgentServer) -> None:
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    headers = {"X-API-Key": agent.keyring["alice"].key}
    first = httpx.post(f"{agent.url}/threads/{thread_id}/runs/stream", headers=headers,
                       json={"assistant_id": "demo", "input": HELLO,
                             "stream_mode": "messages-tuple", "stream_resumable": True})
    ids = _ids(first)
    assert ids == list(range(1, len(ids) + 1))
    location = first.headers["location"]
    assert location.endswith("/stream") and first.headers["content-location"] in location
    again = httpx.get(agent.url + location, headers={**headers, "Last-Event-ID": "5"})
    assert _frames(again.content) == _frames(first.content)[5:]
    everything = httpx.get(agent.url + location, headers={**headers, "Last-Event-ID": "-1"})
    assert _frames(everything.content) == _frames(first.content)


def test_reconnect_reaches_another_replica(agent_server: Any) -> None:
    """Two servers on one store: a stream started on A is resumed from B."""
    a = agent_server(demo=SLOW_DEMO)
    client = a.client()
    thread_id = client.threads.create()["thread_id"]
    headers = {"X-API-Key": a.keyring["alice"].key}
    with httpx.stream("POST", f"{a.url}/threads/{thread_id}/runs/stream", headers=headers,
                      json={"assistant_id": "demo", "input": HELLO,
                            "stream_mode": "messages-tuple", "stream_resumable": True}) as cut:
        location = cut.headers["location"]
        seen: list[int] = []
        for line in cut.iter_lines():
            if line.startswith("id:"):
                seen.append(int(line[3:]))
            if len(seen) == 4:
                break
    replica = agent_server(demo=SLOW_DEMO)
    rest = httpx.get(replica.url + location, timeout=30,
                     headers={**headers, "Last-Event-ID": str(seen[-1])})
    resumed = _ids(rest)
    assert resumed[0] == 5 and resumed == list(range(5, 5 + len(resumed)))
    assert b"event: end" in rest.content


def test_the_log_keeps_at_most_max_logged_events(agent_server: Any) -> None:
    """Retention is bounded: past `[runs] max_logged_events` a run streams live only."""
    agent: AgentServer = agent_server(demo={"token_delay_ms": 0, "reply_tokens": 150},
                                      runs={"max_logged_events": 100})
    client = agent.client()
    thread_id = client.threads.create()["thread_id"]
    live = list(client.runs.stream(thread_id, "demo", input=HELLO,
                                   stream_mode="messages-tuple", stream_resumable=True))
    assert len(live) > 150
    run_id = live[0].data["run_id"]
    headers = {"X-API-Key": agent.keyring["alice"].key, "Last-Event-ID": "-1"}
    replay = httpx.get(f"{agent.url}/threads/{thread_id}/runs/{run_id}/stream",
                       headers=headers)
    assert _ids(replay) == list(range(1, 101))


def test_a_run_is_cancelled_and_joined_from_another_replica(agent_server: Any) -> None:
    """Two servers on one store: a background run on A is cancelled through B (A sees the
    request at its next poll), and B's join and run record report how it ended."""
    a, b = agent_server(), agent_server()
    on_a, on_b = a.client(), b.client()
    thread_id = on_a.threads.create()["thread_id"]
    run = on_a.runs.create(thread_id, "slow", input={"steps": []})
    deadline = time.monotonic() + 15
    while on_b.threads.get_state(thread_id)["next"] != ["b"]:  # step a committed on A
        assert time.monotonic() < deadline
        time.sleep(0.05)
    on_b.runs.cancel(thread_id, run["run_id"], wait=True)
    assert on_b.runs.get(thread_id, run["run_id"])["status"] == "interrupted"
    assert on_b.runs.join(thread_id, run["run_id"])["steps"] == ["a"]
    assert on_a.threads.get(thread_id)["status"] == "idle"
