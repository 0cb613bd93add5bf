"""/v1/chat/stream against a real uvicorn server, on SQLite and on Postgres."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from service.streaming import executor
from tests.conftest import make_settings
from tests.support import graphs
from tests.support.servers import ThreadServer
from tests.support.sse import SSEFrame, events, iter_frames, slow_run


def stream(server: ThreadServer, **body: Any) -> list[SSEFrame]:
    with httpx.stream("POST", server.url + "/v1/chat/stream", json=body, timeout=30) as response:
        assert response.status_code == 200, response.read()
        return events(response)


def names(frames: list[SSEFrame]) -> list[str]:
    return [frame.event or "" for frame in frames]


def test_stream_headers_and_framing(server: ThreadServer) -> None:
    """A stream is text/event-stream, uncached, unbuffered, and ids rise from 1."""
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"message": "hello"}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        assert response.headers["x-request-id"]
        frames = events(response)
    assert [int(f.id or 0) for f in frames] == list(range(1, len(frames) + 1))
    assert frames[0].event == "metadata"
    assert frames[-1].event == "end"
    assert frames[-1].data["status"] == "success"
    meta = frames[0].data
    assert meta["graph"] == "demo"
    uuid.UUID(meta["thread_id"])  # a server-made UUID when none was given
    assert frames[-1].data["run_id"] == meta["run_id"]


def test_messages_mode_streams_token_deltas(server: ThreadServer) -> None:
    """`messages` frames carry deltas that add up to the reply, with node and message id."""
    frames = stream(server, message="hello", thread_id="tokens-1")
    tokens = [f.data for f in frames if f.event == "messages"]
    assert len(tokens) >= 8
    assert {t["node"] for t in tokens} == {"agent"}
    assert len({t["message_id"] for t in tokens}) == 1
    assert all(t["type"] == "ai" for t in tokens)
    text = "".join(t["content"] for t in tokens)
    assert text.startswith("I have seen 1 message in this conversation.")
    state = httpx.get(server.url + "/v1/threads/tokens-1/state").json()
    assert state["values"]["messages"][-1]["content"] == text


@pytest.mark.parametrize("mode", ["values", "updates", "messages", "custom", "debug"])
def test_each_stream_mode(server: ThreadServer, mode: str) -> None:
    """Every stream mode yields events named after it, between metadata and end."""
    frames = stream(server, message="use a tool", stream_mode=mode)
    body = frames[1:-1]
    assert names(frames)[0] == "metadata" and names(frames)[-1] == "end"
    assert body and set(names(body)) == {mode}
    data = [f.data for f in body]
    if mode == "values":
        assert [m["type"] for m in data[-1]["messages"]] == ["human", "ai", "tool", "ai"]
    elif mode == "updates":
        assert [next(iter(d)) for d in data] == ["agent", "tools", "agent"]
    elif mode == "messages":
        assert any(d.get("tool_call_chunks") for d in data)
        tool = [d for d in data if d["type"] == "tool"]
        assert tool and tool[0]["name"] == "count_words" and tool[0]["tool_call_id"]
    elif mode == "custom":
        assert [d["stage"] for d in data] == ["thinking", "replied", "tool", "thinking", "replied"]
    else:
        assert {"checkpoint", "task", "task_result"} <= {d["type"] for d in data}
        assert all("step" in d and "payload" in d for d in data)


def test_combined_stream_modes(server: ThreadServer) -> None:
    """A list of modes interleaves their events in the order the graph produced them."""
    frames = stream(server, message="hi", stream_mode=["updates", "messages", "custom", "updates"])
    kinds = names(frames)[1:-1]
    assert set(kinds) == {"updates", "messages", "custom"}
    # progress is written before the model streams, and the update lands after it.
    assert kinds.index("custom") < kinds.index("messages") < kinds.index("updates")


def test_input_instead_of_message(server: ThreadServer) -> None:
    """Raw graph input is passed through unchanged."""
    frames = stream(server, input={"steps": ["given"]}, graph="odd", stream_mode="values")
    assert frames[-2].data["steps"] == ["given", "a", "odd"]


def test_tokens_arrive_before_the_run_ends(serve: Callable[[Settings], ThreadServer],
                                           database_url: str) -> None:
    """The first token reaches the client while the run is still going (no buffering)."""
    server = serve(make_settings(database_url, demo={"token_delay_ms": 100, "reply_tokens": 20}))
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"message": "hi", "thread_id": "incremental"}, timeout=30) as response:
        frames = iter_frames(response)
        first = next(f for f in frames if f.event == "messages")
        # Causal, not timed: the reply is not yet committed when its first token is here.
        state = httpx.get(server.url + "/v1/threads/incremental/state").json()
        assert state["next"] == ["agent"]
        assert [m["type"] for m in state["values"]["messages"]] == ["human"]
        rest = [f for f in frames if f.event]
    assert first.data["content"] == "I "
    assert rest[-1].event == "end"
    state = httpx.get(server.url + "/v1/threads/incremental/state").json()
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"]


def test_heartbeats_during_silence(serve: Callable[[Settings], ThreadServer],
                                   database_url: str) -> None:
    """A comment frame is sent while the graph is silent longer than the interval."""
    server = serve(make_settings(database_url, streaming={"heartbeat_interval_s": 0.2}))
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"input": {}, "graph": "silent", "stream_mode": "updates"},
                      timeout=30) as response:
        frames = list(iter_frames(response))
    comments = [f.comment for f in frames if f.comment is not None]
    assert "heartbeat" in comments
    kinds = [f.event for f in frames if f.event]
    assert kinds == ["metadata", "updates", "updates", "end"]


def test_disconnect_cancels_the_run_and_keeps_finished_steps(server: ThreadServer) -> None:
    """Closing the connection cancels the running node; the step before it stays saved."""
    graphs.EVENTS.clear()
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"input": {}, "graph": "slow", "thread_id": "cancel-me",
                            "stream_mode": "custom"}, timeout=30) as response:
        for frame in iter_frames(response):
            if frame.event == "custom" and frame.data["stage"] == "b-started":
                break
    deadline = time.monotonic() + 10
    while "b-cancelled" not in graphs.EVENTS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "b-cancelled" in graphs.EVENTS
    state = httpx.get(server.url + "/v1/threads/cancel-me/state").json()
    assert state["values"]["steps"] == ["a"]
    assert state["next"] == ["b"]
    # The thread's lease was released, so a new run may start at once.
    retry = stream(server, input={}, graph="demo", thread_id="cancel-me", stream_mode="updates")
    assert retry[-1].event == "end"


def test_failing_node_gives_error_then_end(server: ThreadServer) -> None:
    """A graph exception becomes a safe `error` event carrying the request id, then `end`."""
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"input": {}, "graph": "failing", "stream_mode": "updates"},
                      headers={"x-request-id": "trace-me-123"}, timeout=30) as response:
        raw = response.read().decode()
    assert graphs.SECRET not in raw and "hunter2" not in raw and "Traceback" not in raw
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"input": {}, "graph": "failing", "stream_mode": "updates"},
                      headers={"x-request-id": "trace-me-124"}, timeout=30) as response:
        frames = events(response)
    assert names(frames) == ["metadata", "updates", "error", "end"]
    error = frames[2].data
    assert error == {"code": "graph_error", "message": "The graph failed while running.",
                     "retryable": False, "request_id": "trace-me-124"}
    assert frames[3].data["status"] == "error"


def test_odd_values_never_break_the_stream(server: ThreadServer) -> None:
    """Values JSON cannot express natively are converted, never crash the stream or leak."""
    frames = stream(server, input={}, graph="odd", stream_mode="custom")
    custom = frames[2].data
    assert custom["big"] == 2**70
    assert sorted(custom["set"]) == [1, 2]
    assert custom["opaque"] == {"__unserializable__": "Opaque"}
    assert custom["1"] == "non-string key"
    assert frames[-1].data["status"] == "success"


def test_turn_two_sees_turn_one(server: ThreadServer) -> None:
    """The second turn on a thread is answered with the first in its context."""
    first = stream(server, message="first", thread_id="memory-1", stream_mode="values")
    second = stream(server, message="second", thread_id="memory-1", stream_mode="values")
    history = second[-2].data["messages"]
    assert [m["content"] for m in history if m["type"] == "human"] == ["first", "second"]
    assert history[-1]["content"].startswith("I have seen 3 messages")
    assert first[0].data["thread_id"] == second[0].data["thread_id"] == "memory-1"


def test_concurrent_threads_never_mix(server: ThreadServer) -> None:
    """Parallel streams on different threads each see only their own conversation."""
    def one(i: int) -> tuple[int, list[SSEFrame]]:
        return i, stream(server, message=f"note {i}", thread_id=f"mix-{i}", stream_mode="values")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, frames in results:
        assert frames[0].data["thread_id"] == f"mix-{i}"
        final = frames[-2].data["messages"]
        assert [m["content"] for m in final if m["type"] == "human"] == [f"note {i}"]


def test_second_run_on_a_busy_thread_is_refused(server: ThreadServer) -> None:
    """While a run holds a thread, another run or a delete on it gets 409 thread_busy."""
    with slow_run(server.url, "busy-1"):
        busy = httpx.post(server.url + "/v1/chat/stream",
                          json={"message": "me too", "thread_id": "busy-1"}, timeout=10)
        busy_invoke = httpx.post(server.url + "/v1/chat",
                                 json={"message": "me too", "thread_id": "busy-1"}, timeout=10)
        busy_delete = httpx.delete(server.url + "/v1/threads/busy-1", timeout=10)
        other = httpx.post(server.url + "/v1/chat",
                           json={"message": "unrelated", "thread_id": "busy-2"}, timeout=10)
    assert [r.status_code for r in (busy, busy_invoke, busy_delete)] == [409, 409, 409]
    for refused in (busy, busy_invoke, busy_delete):
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"]
        assert refused.json()["code"] == "thread_busy"
    assert other.status_code == 200


def test_max_stream_duration_ends_with_error(serve: Callable[[Settings], ThreadServer],
                                             database_url: str) -> None:
    """A run longer than streaming.max_duration_s is cancelled with run_timeout, then end."""
    server = serve(make_settings(database_url, streaming={"max_duration_s": 0.5}))
    frames = stream(server, input={}, graph="slow", stream_mode="updates")
    assert names(frames) == ["metadata", "updates", "error", "end"]
    assert frames[2].data["code"] == "run_timeout"
    assert frames[3].data["status"] == "timeout"


def test_a_client_that_stops_reading_is_let_go(serve: Callable[[Settings], ThreadServer],
                                               database_url: str) -> None:
    """A client that keeps its socket open but reads nothing has its run cancelled after
    streaming.send_timeout_s, and the thread is free again."""
    server = serve(make_settings(database_url, streaming={"send_timeout_s": 0.5}))
    graphs.EVENTS.clear()
    body = json.dumps({"input": {}, "graph": "flood", "thread_id": "stalled",
                       "stream_mode": "custom"}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"POST /v1/chat/stream HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Never read; wait (bounded) for the server to give up on us.
        deadline = time.monotonic() + 30
        while "flood-cancelled" not in graphs.EVENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "flood-cancelled" in graphs.EVENTS
        after = httpx.post(server.url + "/v1/chat",
                           json={"message": "hi", "thread_id": "stalled"}, timeout=30)
    assert after.status_code == 200


def test_debug_mode_never_carries_exception_text(server: ThreadServer) -> None:
    """LangGraph puts the exception object in debug payloads; only its type goes out."""
    with httpx.stream("POST", server.url + "/v1/chat/stream",
                      json={"input": {}, "graph": "failing", "stream_mode": "debug"},
                      timeout=30) as response:
        raw = response.read().decode()
    assert "hunter2" not in raw and "SELECT" not in raw
    assert '{"__exception__":"RuntimeError"}' in raw
    assert "event: error" in raw
    assert "event: end" in raw


def test_a_run_that_loses_its_lease_stops(serve: Callable[[Settings], ThreadServer],
                                          tmp_path: Path) -> None:
    """If another holder takes the thread's lease, the run stops with lease_lost, then end,
    so two runs never interleave on one thread."""
    db = tmp_path / "leases.sqlite"
    server = serve(make_settings(f"sqlite:///{db}", runs={"lease_ttl_s": 3}))
    with slow_run(server.url, "stolen") as frames:
        with sqlite3.connect(db) as conn:  # another worker took over the thread
            conn.execute("UPDATE graphgate_thread_leases SET run_id = 'intruder'"
                         " WHERE thread_id LIKE '%.stolen'")
        rest = [f for f in frames if f.event]
    assert [f.event for f in rest] == ["error", "end"]
    assert rest[0].data["code"] == "lease_lost"
    assert rest[1].data["status"] == "error"


def test_a_run_longer_than_the_lease_ttl_keeps_its_thread(
        serve: Callable[[Settings], ThreadServer], tmp_path: Path) -> None:
    """The worker's lease keeper renews a running run's lease, so a run may outlive the
    ttl: its lease's expiry moves on, and no one else can take the thread meanwhile."""
    db = tmp_path / "leases.sqlite"
    server = serve(make_settings(f"sqlite:///{db}", runs={"lease_ttl_s": 2}))

    def expiry() -> float:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT expires_at FROM graphgate_thread_leases"
                               " WHERE thread_id LIKE '%.long'").fetchone()
        assert row is not None, "the lease is gone"
        return float(row[0])

    with slow_run(server.url, "long"):
        first = expiry()
        time.sleep(3.0)  # one and a half ttls: only renewals keep the lease
        assert expiry() > first + 1.0
        busy = httpx.post(server.url + "/v1/chat/stream", timeout=10,
                          json={"message": "hi", "thread_id": "long"})
        assert busy.status_code == 409
        assert expiry() > time.time()  # still ours: the run was not stopped


def test_an_abandoned_run_keeps_its_thread_until_it_ends(
        server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that outlives the cancel grace period keeps the thread leased until it ends,
    so no new run can interleave with its late writes."""
    monkeypatch.setattr(executor, "CANCEL_GRACE_S", 0.2)
    graphs.EVENTS.clear()
    with slow_run(server.url, "stubborn-1", graph="stubborn"):
        pass  # disconnect as soon as the node is running
    deadline = time.monotonic() + 10
    while "stubborn-cancelled" not in graphs.EVENTS and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.4)  # past the grace period: the run is now abandoned, not finished
    refused = httpx.post(server.url + "/v1/chat",
                         json={"message": "hi", "thread_id": "stubborn-1"}, timeout=10)
    assert "stubborn-done" not in graphs.EVENTS  # so it was still running when refused
    assert refused.status_code == 409
    status = 409
    while status == 409 and time.monotonic() < deadline:
        time.sleep(0.1)
        status = httpx.post(server.url + "/v1/chat",
                            json={"message": "hi", "thread_id": "stubborn-1"},
                            timeout=10).status_code
    assert "stubborn-done" in graphs.EVENTS
    assert status == 200
