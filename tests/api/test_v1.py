"""/v1 chat, thread endpoints and bad input, against a real server on SQLite and Postgres."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.conftest import make_settings
from tests.support.servers import ThreadServer

PROBLEM_FIELDS = {"type", "title", "status", "code", "request_id"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_FIELDS
    assert body["status"] == status
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


def chat(server: ThreadServer, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat", json=body, timeout=30)


def test_chat_returns_reply_and_thread(server: ThreadServer) -> None:
    """POST /v1/chat runs to completion and returns the reply and a new thread id."""
    first = chat(server, message="hello")
    assert first.status_code == 200
    body = first.json()
    assert body["graph"] == "demo"
    assert body["reply"].startswith("I have seen 1 message")
    assert [m["type"] for m in body["output"]["messages"]] == ["human", "ai"]
    second = chat(server, message="again", thread_id=body["thread_id"]).json()
    assert second["reply"].startswith("I have seen 3 messages")
    assert second["thread_id"] == body["thread_id"]


def test_state_and_history(server: ThreadServer) -> None:
    """State shows the latest checkpoint; history pages backwards through all of them."""
    for text in ("one", "two"):
        assert chat(server, message=text, thread_id="hist").status_code == 200
    state = httpx.get(server.url + "/v1/threads/hist/state").json()
    assert state["thread_id"] == "hist"
    assert state["next"] == []
    assert len(state["values"]["messages"]) == 4
    assert state["metadata"]["graph_id"] == "demo"
    page1 = httpx.get(server.url + "/v1/threads/hist/history", params={"limit": 3}).json()
    assert len(page1["items"]) == 3
    assert page1["items"][0]["checkpoint_id"] == state["checkpoint_id"]
    page2 = httpx.get(server.url + "/v1/threads/hist/history",
                      params={"limit": 100, "before": page1["next_before"]}).json()
    assert page2["next_before"] is None
    ids = [i["checkpoint_id"] for i in page1["items"] + page2["items"]]
    assert len(ids) == len(set(ids))
    # Two turns of input, agent steps: 3 checkpoints per turn.
    assert len(ids) == 6
    assert page2["items"][-1]["parent_checkpoint_id"] is None


def test_delete_thread_removes_its_checkpoints(server: ThreadServer) -> None:
    """DELETE answers 204, the thread is gone, and deleting again is 404."""
    assert chat(server, message="forget me", thread_id="gone").status_code == 200
    deleted = httpx.delete(server.url + "/v1/threads/gone")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(httpx.get(server.url + "/v1/threads/gone/state"), 404, "thread_not_found")
    assert_problem(httpx.get(server.url + "/v1/threads/gone/history"), 404, "thread_not_found")
    assert_problem(httpx.delete(server.url + "/v1/threads/gone"), 404, "thread_not_found")
    # A new run on the same id starts from nothing.
    again = chat(server, message="hello", thread_id="gone").json()
    assert again["reply"].startswith("I have seen 1 message")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"message": 42}, 422, "invalid_request"),
        ({"message": ""}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"message": "hi", "graph": "nope"}, 422, "unknown_graph"),
        ({"message": "hi", "thread_id": "../etc"}, 422, "invalid_request"),
        ({"message": "hi", "thread_id": "a" * 65}, 422, "invalid_request"),
        ({"message": "hi", "thread_id": "tenant:x"}, 422, "invalid_request"),
        ({"message": "hi", "config": {"configurable": {"thread_id": "x"}}}, 422,
         "invalid_request"),
        ({"message": "x" * 32_001}, 422, "invalid_request"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_bad_bodies(server: ThreadServer, path: str, body: dict[str, Any], status: int,
                    code: str) -> None:
    """Bad bodies get one problem+json shape, with no stack trace or echoed input."""
    response = httpx.post(server.url + path, json=body, timeout=10)
    assert_problem(response, status, code)
    assert "x" * 100 not in response.text  # the oversized message is not echoed back


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"message": "hi", "stream_mode": "tokens"}, "invalid_request"),
        ({"message": "hi", "stream_mode": []}, "invalid_request"),
        ({"message": "hi", "input": {"messages": []}}, "invalid_request"),
        ({"input": "not an object"}, "invalid_request"),
    ],
)
def test_bad_stream_options(server: ThreadServer, body: dict[str, Any], code: str) -> None:
    """Unknown stream modes and conflicting inputs are refused before any stream starts."""
    response = httpx.post(server.url + "/v1/chat/stream", json=body, timeout=10)
    problem = assert_problem(response, 422, code)
    assert problem["errors"]
    assert all(set(e) == {"loc", "msg"} for e in problem["errors"])


def test_malformed_json(server: ThreadServer) -> None:
    """A body that is not JSON gets 400 malformed_json."""
    response = httpx.post(server.url + "/v1/chat", content=b'{"message": ',
                          headers={"content-type": "application/json"})
    assert_problem(response, 400, "malformed_json")


def test_oversized_body(serve: Callable[[Settings], ThreadServer], database_url: str) -> None:
    """Bodies over limits.max_body_bytes get 413, declared or chunked."""
    server = serve(make_settings(database_url, limits={"max_body_bytes": 2048}))
    big = json.dumps({"message": "x" * 4096}).encode()
    assert_problem(httpx.post(server.url + "/v1/chat", content=big,
                              headers={"content-type": "application/json"}), 413, "body_too_large")

    def chunks() -> Any:
        for start in range(0, len(big), 512):
            yield big[start:start + 512]

    chunked = httpx.post(server.url + "/v1/chat", content=chunks(),
                         headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert_problem(chunked, 413, "body_too_large")


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/threads/nope/state", 404, "thread_not_found"),
    ("GET", "/v1/threads/nope/history", 404, "thread_not_found"),
    ("DELETE", "/v1/threads/nope", 404, "thread_not_found"),
    ("GET", "/v1/threads/bad%20id/state", 422, "invalid_request"),
    ("GET", "/v1/threads/ok/history?limit=0", 422, "invalid_request"),
    ("GET", "/v1/threads/ok/history?before=x%27%3B", 422, "invalid_request"),
    ("GET", "/no/such/route", 404, "not_found"),
    ("PUT", "/v1/chat", 405, "method_not_allowed"),
])
def test_bad_paths(server: ThreadServer, method: str, path: str, status: int, code: str) -> None:
    """Unknown threads are 404 and malformed ids 422, in the one error shape."""
    assert_problem(httpx.request(method, server.url + path), status, code)


def test_request_id_is_kept_or_replaced(server: ThreadServer) -> None:
    """A well-formed X-Request-ID is echoed; a hostile one is replaced."""
    kept = httpx.get(server.url + "/v1/threads/nope/state", headers={"x-request-id": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123" == kept.json()["request_id"]
    replaced = httpx.get(server.url + "/v1/threads/nope/state",
                         headers={"x-request-id": "evil\tvalue<script>"})
    assert replaced.headers["x-request-id"] != "evil\tvalue<script>"
    assert len(replaced.headers["x-request-id"]) == 32


def test_failing_graph_invoke_is_a_safe_500(server: ThreadServer) -> None:
    """A graph failure in /v1/chat is a 500 problem without the exception text."""
    response = httpx.post(server.url + "/v1/chat",
                          json={"message": "hi", "graph": "failing"}, timeout=30)
    body = assert_problem(response, 500, "graph_error")
    assert "hunter2" not in response.text and "SELECT" not in response.text
    assert body["error_code"] == "graph_error"


def test_health_and_readiness(server: ThreadServer) -> None:
    """/healthz is always 200; /readyz is 200 with the store and 503 once draining."""
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    server.lifecycle.begin_shutdown()
    draining = httpx.get(server.url + "/readyz")
    assert assert_problem(draining, 503, "not_ready")["reason"] == "shutting_down"
    refused = httpx.post(server.url + "/v1/chat/stream", json={"message": "late"})
    assert_problem(refused, 503, "unavailable")
    assert refused.headers["retry-after"]
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_openapi_documents_the_api(server: ThreadServer) -> None:
    """/openapi.json lists every route and /docs serves the UI."""
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/chat", "/v1/chat/stream", "/v1/threads/{thread_id}/state",
            "/v1/threads/{thread_id}/history", "/v1/threads/{thread_id}", "/healthz",
            "/readyz"} <= set(spec["paths"])
    stream_doc = spec["paths"]["/v1/chat/stream"]["post"]["responses"]["200"]
    assert "text/event-stream" in stream_doc["content"]
    assert httpx.get(server.url + "/docs").status_code == 200


def test_reply_is_only_this_turns_answer() -> None:
    """`reply` is None when the run added no AI message after the user's, never a stale one."""
    from langchain_core.messages import AIMessage, HumanMessage

    from service.api.v1 import _last_ai_text

    earlier = [HumanMessage("q1"), AIMessage("a1")]
    assert _last_ai_text({"messages": earlier}) == "a1"
    assert _last_ai_text({"messages": [*earlier, HumanMessage("q2")]}) is None
    assert _last_ai_text({"messages": [*earlier, HumanMessage("q2"),
                                       AIMessage([{"type": "text", "text": "a2"}])]}) == "a2"
    assert _last_ai_text({"steps": []}) is None
