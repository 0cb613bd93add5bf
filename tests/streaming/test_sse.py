"""SSE framing and EventStreamResponse driven directly as an ASGI app."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from service.streaming.sse import (
    HEARTBEAT,
    EmitFrame,
    EventStreamResponse,
    Producer,
    encode_event,
)

SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "path": "/stream",
    "headers": [],
    "query_string": b"",
}
# Guards against a hang if a test's expectation is broken; never a timing assertion.
GUARD_S = 10.0


class FakeClient:
    """Hand-written ASGI receive/send: records what is sent, can hang up on demand."""

    def __init__(self, *, disconnect_after_bodies: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.disconnect_after_bodies = disconnect_after_bodies
        self._request_sent = False
        self._hang_up = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if (
            self.disconnect_after_bodies is not None
            and len(self.bodies()) >= self.disconnect_after_bodies
        ):
            self._hang_up.set()

    def start(self) -> dict[str, Any]:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    def frames(self) -> list[bytes]:
        """Non-empty body chunks, in order."""
        return [body for body in self.bodies() if body]


class CloseCounter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


def run_response(response: EventStreamResponse, client: FakeClient) -> None:
    async def main() -> None:
        with anyio.fail_after(GUARD_S):
            await response(SCOPE, client.receive, client.send)

    asyncio.run(main())


def frames_producer(frames: list[bytes]) -> Producer:
    async def producer(emit_frame: EmitFrame) -> None:
        for frame in frames:
            emit_frame(frame)

    return producer


# --- encode_event ------------------------------------------------------------------------------


def test_encode_event_with_id() -> None:
    """A frame is event, data and id lines followed by a blank line."""
    assert encode_event("token", b'{"t":"hi"}', 7) == (b'event: token\ndata: {"t":"hi"}\nid: 7\n\n')


def test_encode_event_with_string_id() -> None:
    """A string id is written as given."""
    assert encode_event("end", b"{}", "run-1:3") == b"event: end\ndata: {}\nid: run-1:3\n\n"


def test_encode_event_without_id_has_no_id_line() -> None:
    """With event_id None there is no id line."""
    frame = encode_event("progress", b'{"stage":"a"}')
    assert frame == b'event: progress\ndata: {"stage":"a"}\n\n'
    assert b"id:" not in frame


def test_encode_event_with_zero_id_keeps_the_id_line() -> None:
    """An id of 0 is a real id, not a missing one."""
    assert encode_event("e", b"1", 0).endswith(b"\nid: 0\n\n")


def test_heartbeat_is_an_sse_comment() -> None:
    """The heartbeat frame is the `: heartbeat` comment, blank-line terminated."""
    assert HEARTBEAT == b": heartbeat\n\n"


# --- EventStreamResponse -----------------------------------------------------------------------


def test_response_start_has_sse_headers() -> None:
    """The response starts 200 with the event-stream, no-store and no-buffering headers."""
    client = FakeClient()
    response = EventStreamResponse(
        frames_producer([encode_event("e", b"1")]),
        heartbeat_interval_s=5,
        headers=[(b"x-request-id", b"abc")],
    )
    run_response(response, client)
    start = client.start()
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"x-request-id"] == b"abc"


def test_frames_are_forwarded_in_order_and_the_stream_ends() -> None:
    """Frames reach the client in producer order, then the body is closed. Frames that
    were already queued together go out in one write."""
    frames = [encode_event("token", str(i).encode(), i) for i in range(20)]
    client = FakeClient()
    on_close = CloseCounter()
    response = EventStreamResponse(
        frames_producer(frames), heartbeat_interval_s=5, on_close=on_close
    )
    run_response(response, client)
    assert b"".join(client.frames()) == b"".join(frames)
    assert len(client.frames()) < len(frames)
    last = client.messages[-1]
    assert last == {"type": "http.response.body", "body": b"", "more_body": False}
    assert all(m["more_body"] for m in client.messages[1:-1])
    assert on_close.calls == 1


def test_empty_producer_ends_the_stream() -> None:
    """A producer that sends nothing still yields a complete, empty response."""
    client = FakeClient()
    run_response(EventStreamResponse(frames_producer([]), heartbeat_interval_s=5), client)
    assert client.frames() == []
    assert client.messages[-1]["more_body"] is False


def test_heartbeat_is_sent_while_the_producer_is_silent() -> None:
    """A `: heartbeat` comment goes out when the producer is silent past the interval."""
    first = encode_event("e", b"1", 1)
    second = encode_event("e", b"2", 2)

    async def producer(emit_frame: EmitFrame) -> None:
        emit_frame(first)
        await anyio.sleep(0.3)
        emit_frame(second)

    client = FakeClient()
    run_response(EventStreamResponse(producer, heartbeat_interval_s=0.05), client)
    frames = client.frames()
    assert frames[0] == first
    assert frames[-1] == second
    middle = frames[1:-1]
    assert middle
    assert set(middle) == {HEARTBEAT}


def test_client_disconnect_cancels_the_producer_and_closes_once() -> None:
    """http.disconnect cancels the producer and on_close is still awaited exactly once."""
    events: list[str] = []
    on_close = CloseCounter()

    async def producer(emit_frame: EmitFrame) -> None:
        emit_frame(encode_event("e", b"1", 1))
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            events.append("cancelled")
            raise
        events.append("finished")  # pragma: no cover - must not happen

    client = FakeClient(disconnect_after_bodies=1)
    run_response(EventStreamResponse(producer, heartbeat_interval_s=5, on_close=on_close), client)
    assert events == ["cancelled"]
    assert on_close.calls == 1
    assert client.frames()[0] == encode_event("e", b"1", 1)


def test_on_close_runs_once_on_normal_completion() -> None:
    """on_close is awaited once after the producer finishes normally."""
    on_close = CloseCounter()
    client = FakeClient()
    run_response(
        EventStreamResponse(
            frames_producer([encode_event("e", b"1")]), heartbeat_interval_s=5, on_close=on_close
        ),
        client,
    )
    assert on_close.calls == 1


def test_on_close_runs_when_the_producer_fails() -> None:
    """A producer error propagates, and on_close is still awaited once."""
    on_close = CloseCounter()

    async def producer(emit_frame: EmitFrame) -> None:
        emit_frame(encode_event("e", b"1"))
        raise RuntimeError("graph blew up")

    client = FakeClient()
    with pytest.raises((RuntimeError, ExceptionGroup)) as excinfo:
        run_response(
            EventStreamResponse(producer, heartbeat_interval_s=5, on_close=on_close), client
        )
    error = excinfo.value
    if isinstance(error, ExceptionGroup):
        assert error.subgroup(RuntimeError) is not None
    assert on_close.calls == 1


def test_on_close_completes_even_when_the_request_task_is_cancelled() -> None:
    """on_close is shielded: it runs to completion when the whole request is cancelled."""
    steps: list[str] = []
    producer_started = asyncio.Event()

    async def producer(emit_frame: EmitFrame) -> None:
        producer_started.set()
        await anyio.sleep_forever()

    async def on_close() -> None:
        steps.append("close-start")
        await asyncio.sleep(0.05)
        steps.append("close-end")

    async def main() -> None:
        client = FakeClient()
        response = EventStreamResponse(producer, heartbeat_interval_s=5, on_close=on_close)
        task = asyncio.create_task(response(SCOPE, client.receive, client.send))
        with anyio.fail_after(GUARD_S):
            await producer_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert steps == ["close-start", "close-end"]


def test_send_failure_after_client_left_ends_the_stream_quietly() -> None:
    """An OSError from send (ASGI 2.4 servers, client gone) ends the stream without raising."""
    on_close = CloseCounter()

    class GoneClient(FakeClient):
        async def send(self, message: dict[str, Any]) -> None:
            await super().send(message)
            if len(self.bodies()) >= 2:
                raise OSError("client disconnected")

    frames = [encode_event("e", str(i).encode()) for i in range(5)]
    run_response(
        EventStreamResponse(frames_producer(frames), heartbeat_interval_s=5, on_close=on_close),
        GoneClient(),
    )
    assert on_close.calls == 1


def test_frames_produced_apart_are_written_apart() -> None:
    """Batching never delays a frame: one produced alone goes out on its own, at once."""

    async def producer(emit_frame: EmitFrame) -> None:
        for i in range(3):
            emit_frame(encode_event("token", str(i).encode(), i))
            await anyio.sleep(0.05)

    client = FakeClient()
    run_response(EventStreamResponse(producer, heartbeat_interval_s=5), client)
    assert client.frames() == [encode_event("token", str(i).encode(), i) for i in range(3)]
