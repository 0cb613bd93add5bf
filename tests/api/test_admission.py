"""What it takes to start a run: input limits on `input` too, and a plain `/v1/chat`
whose client hangs up is cancelled like a closed stream."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from service.settings import Settings
from tests.conftest import make_settings
from tests.support.graphs import EVENTS
from tests.support.servers import ThreadServer
from tests.support.sse import iter_frames


@pytest.fixture
def server(serve: Callable[[Settings], ThreadServer], tmp_path: object) -> ThreadServer:
    return serve(make_settings(f"sqlite:///{tmp_path}/a.sqlite",
                               limits={"max_message_chars": 50, "max_input_messages": 3}))


@pytest.mark.parametrize("graph_input", [
    {"messages": [{"role": "user", "content": "x" * 51}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 51}]}]},
    {"messages": [{"role": "user", "content": "hi"}] * 4},
])
def test_input_obeys_the_message_limits(server: ThreadServer, graph_input: object) -> None:
    response = httpx.post(server.url + "/v1/chat/stream", json={"input": graph_input})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_message_obeys_the_message_limit(server: ThreadServer) -> None:
    response = httpx.post(server.url + "/v1/chat", json={"message": "x" * 51})
    assert response.status_code == 422


def test_chat_client_hanging_up_cancels_the_run(server: ThreadServer) -> None:
    EVENTS.clear()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat", timeout=1.5,
                   json={"message": "x", "graph": "slow", "thread_id": "gone"})
    # The slow node sleeps 60 s; cancelled, it frees the thread at once.
    deadline = time.monotonic() + 10
    status = 409
    while status == 409 and time.monotonic() < deadline:
        status = httpx.post(server.url + "/v1/chat", timeout=30,
                            json={"message": "hi", "thread_id": "gone"}).status_code
        time.sleep(0.1)
    assert status == 200
    assert "b-cancelled" in EVENTS


def test_debug_events_name_the_clients_thread_id(server: ThreadServer) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/stream", timeout=30, json={
            "message": "hi", "thread_id": "dbg", "stream_mode": ["debug"]}) as response:
        frames = [f for f in iter_frames(response) if f.event == "debug"]
        text = "".join(str(f.data) for f in frames)
    assert frames and "'thread_id': 'dbg'" in text
    assert ".dbg" not in text  # never the namespaced storage key
