"""No exception text, SQL, hosts or secrets in any error a client can see, on the full stack."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.security.conftest import KeyRing, SecureServe
from tests.support.graphs import SECRET
from tests.support.postgres import PostgresServer
from tests.support.servers import ThreadServer
from tests.support.sse import iter_frames

PROBLEM_KEYS = {"type", "title", "status", "code", "request_id"}


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["code"] == code and body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in (SECRET, "Traceback", "File \"", "RuntimeError", "SELECT", "127.0.0.1"):
        assert leak not in response.text


@pytest.fixture
def server(secure_server: SecureServe) -> ThreadServer:
    return secure_server(limits={"max_body_bytes": 4096, "max_message_chars": 100})


def test_graph_failure_is_generic(server: ThreadServer, keyring: KeyRing,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    alice = keyring["alice"].headers
    response = httpx.post(server.url + "/v1/chat", headers=alice, timeout=30,
                          json={"message": "hi", "graph": "failing"})
    _assert_problem(response, 500, "graph_error")
    with httpx.stream("POST", server.url + "/v1/chat/stream", headers=alice, timeout=30,
                      json={"message": "hi", "graph": "failing"}) as stream:
        frames = [f for f in iter_frames(stream) if f.event]
    assert [f.event for f in frames][-2:] == ["error", "end"]
    error = frames[-2].data
    assert SECRET not in json.dumps(error) and "RuntimeError" not in json.dumps(error)
    assert error["request_id"]
    # The operators' log has the failure, tied to the request id; the client does not.
    assert response.json()["request_id"] in capfd.readouterr().out


def test_bad_input(server: ThreadServer, keyring: KeyRing) -> None:
    alice = {**keyring["alice"].headers, "Content-Type": "application/json"}
    url = server.url + "/v1/chat"
    _assert_problem(httpx.post(url, headers=alice, content=b'{"message": '), 400,
                    "malformed_json")
    _assert_problem(httpx.post(url, headers=alice, content=b"[" * 100_000), 413,
                    "body_too_large")
    _assert_problem(httpx.post(url, headers=alice, json={"message": "x" * 101}), 422,
                    "invalid_request")
    echoed = httpx.post(url, headers=alice, json={"message": 5, "thread_id": SECRET})
    _assert_problem(echoed, 422, "invalid_request")
    # Client-supplied configurable keys are not accepted (the config is server-built).
    extra = httpx.post(url, headers=alice, json={"message": "hi", "configurable":
                                                 {"thread_id": "other", "checkpoint_id": "x"}})
    _assert_problem(extra, 422, "invalid_request")

    def chunks() -> object:
        for _ in range(10):
            yield b" " * 1000

    _assert_problem(httpx.post(url, headers=alice, content=chunks()), 413, "body_too_large")
    _assert_problem(httpx.put(url, headers=alice, json={}), 405, "method_not_allowed")
    _assert_problem(httpx.get(server.url + "/v1/unknown", headers=alice), 404, "not_found")


@pytest.mark.postgres
def test_storage_failure_is_generic(secure_server: SecureServe, keyring: KeyRing,
                                    postgres: PostgresServer) -> None:
    server = secure_server(postgres.create_database(),
                           postgres={"pool_timeout_s": 1, "connect_timeout_s": 1})
    alice = keyring["alice"].headers
    assert httpx.post(server.url + "/v1/chat", headers=alice, json={"message": "hi",
                      "thread_id": "pg"}, timeout=30).status_code == 200
    postgres.stop()
    try:
        for response in (
            httpx.post(server.url + "/v1/chat", headers=alice, timeout=30,
                       json={"message": "hi", "thread_id": "pg"}),
            httpx.get(server.url + "/v1/threads/pg/state", headers=alice, timeout=30),
            httpx.get(server.url + "/v1/threads", headers=alice, timeout=30),
        ):
            _assert_problem(response, 503, "storage_unavailable")
            assert "postgres" not in response.text.lower()
    finally:
        postgres.start()
