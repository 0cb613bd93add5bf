"""The HTTP and SSE half of `graphgate chat`, against httpx mock transports: event parsing,
error lines from problem+json and from proxies, transport failures."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.chat.client import ChatClient, Event, iter_events
from service.chat.errors import ChatError, ServiceProblem, problem_from_response

URL = "http://graphgate.test"


def _problem(http_status: int, **body: Any) -> httpx.Response:
    return httpx.Response(http_status, json={"status": http_status, **body},
                          headers={"content-type": "application/problem+json"})


def _client(handler: Any) -> ChatClient:
    return ChatClient(URL, {"X-API-Key": "ggk_test"}, transport=httpx.MockTransport(handler))


def test_events_are_parsed_as_the_sse_spec_says() -> None:
    """Frames end at a blank line; comments are skipped; multi-line data is joined."""
    lines = [
        ": heartbeat", "",
        "event: metadata", 'data: {"thread_id": "t-1"}', "id: 1", "",
        "event: custom", "data: [1,", "data: 2]", "",
        'data: {"no": "name"}', "",
        "event: ignored-without-data", "",
        "event: messages", 'data: {"cut": "off"}',  # the stream ends mid-frame
    ]
    assert list(iter_events(lines)) == [
        Event("metadata", {"thread_id": "t-1"}),
        Event("custom", [1, 2]),
        Event("message", {"no": "name"}),
    ]


def test_data_that_is_not_json_is_one_error() -> None:
    """graphgate's `data` is always one line of JSON; anything else is not graphgate."""
    with pytest.raises(ChatError, match="not JSON"):
        list(iter_events(["event: messages", "data: <html>", ""]))


def test_problem_json_becomes_one_line() -> None:
    """Status, title, detail and request id; retry hints when the server gives one."""
    response = _problem(409, type="urn:graphgate:problem:thread_busy", title="Thread busy",
                        code="thread_busy", request_id="abc123",
                        detail="Another run is in progress on this thread.")
    response.headers["retry-after"] = "1"
    problem = problem_from_response(response)
    assert str(problem) == ("409 Thread busy: Another run is in progress on this thread. "
                            "(request id abc123; retry after 1 s)")
    assert (problem.status, problem.code) == (409, "thread_busy")


def test_validation_errors_name_the_field() -> None:
    response = _problem(422, title="Invalid request", code="invalid_request",
                        request_id="r-1",
                        errors=[{"loc": ["body", "thread_id"], "msg": "String should match"}])
    assert str(problem_from_response(response)) == (
        "422 Invalid request: body.thread_id: String should match (request id r-1)")


def test_a_proxy_error_page_still_gives_status_and_request_id() -> None:
    """nginx's HTML 502 has no problem+json: the status line and x-request-id are used."""
    response = httpx.Response(502, text="<html><body>bad gateway</body></html>",
                              headers={"x-request-id": "nginx-id-1"})
    assert str(problem_from_response(response)) == (
        "502 Bad Gateway (not a graphgate error body: from a proxy in front of it?; "
        "request id nginx-id-1)")


def test_a_redirect_names_where_to_go() -> None:
    """nginx's plain-HTTP server answers 301 to https://: say so, do not follow it."""
    response = httpx.Response(301, headers={"location": "https://graphgate.example.com/v1/x"})
    line = str(problem_from_response(response))
    assert line.startswith("301 Moved Permanently")
    assert line.endswith("(redirects to https://graphgate.example.com; use that as --url)")


def test_control_characters_in_error_bodies_are_dropped() -> None:
    """A hostile body cannot send terminal escape sequences or extra lines."""
    response = _problem(500, title="Oops\x1b]52;c;ZXZpbA==\x07",
                        detail="line one\nline two\x1b[2J", request_id="r\x1b[31m2")
    line = str(problem_from_response(response))
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert line.startswith("500 Oops]52;c;ZXZpbA==: line one line two[2J")


def test_the_stream_request_carries_message_thread_graph_and_key() -> None:
    """The body asks for `messages` and `custom` only: tokens, tool calls and progress."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = ('event: metadata\ndata: {"thread_id":"t-9"}\nid: 1\n\n'
                'event: end\ndata: {"status":"success"}\nid: 2\n\n')
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    events = list(_client(handler).stream_chat("hi", thread_id="t-9", graph="demo"))
    assert [e.name for e in events] == ["metadata", "end"]
    [request] = seen
    assert request.url == f"{URL}/v1/chat/stream"
    assert request.headers["x-api-key"] == "ggk_test"
    assert json.loads(request.content) == {"message": "hi", "thread_id": "t-9", "graph": "demo",
                                           "stream_mode": ["messages", "custom"]}


def test_a_refused_stream_raises_the_problem() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _problem(422, title="Unknown graph", code="unknown_graph",
                        request_id="r-3")

    with pytest.raises(ServiceProblem, match=r"^422 Unknown graph \(request id r-3\)$") as caught:
        list(_client(handler).stream_chat("hi", thread_id=None, graph="nope"))
    assert caught.value.code == "unknown_graph"


def test_a_200_that_is_not_an_event_stream_is_refused() -> None:
    """--url pointing at some other web server: say so rather than print nothing."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html></html>", headers={"content-type": "text/html"})

    with pytest.raises(ChatError, match="answered with text/html, not an event stream"):
        list(_client(handler).stream_chat("hi", thread_id=None, graph=None))


@pytest.mark.parametrize(("exc", "expected"), [
    (httpx.ConnectError("[Errno 111] Connection refused"),
     f"cannot connect to {URL}/v1/threads: connection refused"),
    (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
     "(for a private CA, set SSL_CERT_FILE to its certificate file)"),
    (httpx.ConnectTimeout("timed out"), f"cannot connect to {URL}/v1/threads: timed out"),
    (httpx.RemoteProtocolError("peer closed connection"),
     f"connection to {URL}/v1/threads was cut: peer closed connection"),
])
def test_transport_failures_name_the_url_and_the_reason(exc: Exception, expected: str) -> None:
    """No exception chain is attached, so nothing can print a traceback of httpx internals."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(ChatError) as caught:
        _client(handler).check_access()
    assert expected in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_thread_ids_are_escaped_into_paths() -> None:
    """An id typed at the prompt can never change which path the request goes to."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(204)

    _client(handler).delete_thread("a/../b")
    assert seen == ["/v1/threads/a%2F..%2Fb"]
