"""Server-Sent Events framing and a pure-ASGI streaming response.

The response runs a producer task that feeds events into a channel and writes them out
as they come, with heartbeat comments in silences. It watches `http.disconnect`
itself (uvicorn's HTTP/1.1 protocols report ASGI spec 2.3, where a send to a gone client
does not raise), so a client hanging up cancels the producer, and with it the graph run,
at once rather than at the next write.

We do not use Starlette's StreamingResponse (no heartbeats, no send timeout, no hook that
runs once the stream is over) nor add sse-starlette: framing is a few lines, and the
stream lifecycle (see EmitFrame below) is the product's core.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.streaming.send_watchdog import SendWatchdog, check_interval

log = structlog.get_logger("graphgate.sse")

HEARTBEAT = b": heartbeat\n\n"

# Headers every event stream carries: never cached or stored, never buffered by nginx
# (X-Accel-Buffering), and never compressed (no gzip middleware ever sees event streams).
SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)


def encode_event(event: str, data: bytes, event_id: str | int | None = None) -> bytes:
    """One SSE frame. `data` must be one line of JSON (ours always is)."""
    frame = b"event: " + event.encode() + b"\ndata: " + data + b"\n"
    if event_id is not None:
        frame += b"id: " + str(event_id).encode() + b"\n"
    return frame + b"\n"


# Called with a function that queues one encoded frame. Queuing never blocks, on purpose:
# LangGraph cancels a run's nodes only when cancellation reaches it inside its stream
# generator, so the code consuming that generator must not wait anywhere else. LangGraph
# buffers a node's output without bound regardless, so a bounded channel here would not
# bound memory; slow readers are bounded by send_timeout_s and the maximum duration.
EmitFrame = Callable[[bytes], None]
Producer = Callable[[EmitFrame], Awaitable[None]]


# How a stream ended, as the response saw it: the producer finished; the client hung
# up; the client stopped reading (send timeout); or the server cancelled it (shutdown).
Ending = Literal["completed", "client_disconnected", "send_timeout", "cancelled"]


class StreamObserver(Protocol):
    """Told about a stream's life (metrics, access logs); must not block."""

    def heartbeat(self) -> None: ...

    def closed(self, ending: Ending) -> None: ...


# At most this much already-queued output goes out in one write.
MAX_WRITE_BYTES = 64 * 1024


def _with_queued(first: bytes, frames: MemoryObjectReceiveStream[bytes]) -> bytes:
    """`first` and whatever frames are already queued behind it, up to MAX_WRITE_BYTES."""
    parts = [first]
    size = len(first)
    while size < MAX_WRITE_BYTES:
        try:
            frame = frames.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
        if frame is HEARTBEAT:  # data is flowing: no need for it
            continue
        parts.append(frame)
        size += len(frame)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class EventStreamResponse(Response):
    """Stream frames from `producer` as `text/event-stream`.

    Args:
        producer: coroutine function given an `emit_frame(bytes)` callable; the stream
            ends when it returns.
        heartbeat_interval_s: silence after which a comment frame is sent, so proxies
            with read timeouts keep the connection and clients can tell it is alive.
        headers: extra response headers (e.g. the request id).
        on_close: awaited once after the stream ends for any reason, shielded from
            cancellation (releases run leases and the like).
        send_timeout_s: a client that has not taken a frame within this long (it stopped
            reading but kept the socket open) is treated as gone: the run is cancelled
            rather than held, with its lease and buffered output, for ever.
        watchdog: the worker's SendWatchdog, which times every stream's writes and
            silences from one task (send timeouts, heartbeats); without one the response
            runs a watchdog of its own.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        heartbeat_interval_s: float,
        headers: list[tuple[bytes, bytes]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        send_timeout_s: float = 30.0,
        observer: StreamObserver | None = None,
        watchdog: SendWatchdog | None = None,
    ) -> None:
        # Response's own __init__ renders a body; a stream has none, so set its fields.
        self.producer = producer
        self.heartbeat_interval_s = heartbeat_interval_s
        self.raw_headers = [*SSE_HEADERS, *(headers or [])]
        self.on_close = on_close
        self.send_timeout_s = send_timeout_s
        self.observer = observer
        self.watchdog = watchdog
        self.ending: Ending = "cancelled"
        self._sending_since: float | None = None
        self._last_write = 0.0
        self._sender: MemoryObjectSendStream[bytes] | None = None
        self._scope: anyio.CancelScope | None = None
        self.status_code = 200
        self.background: BackgroundTask | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            completed = False
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                watchdog = self.watchdog
                if watchdog is None:
                    watchdog = SendWatchdog()
                    tg.start_soon(watchdog.run,
                                  check_interval(self.send_timeout_s, self.heartbeat_interval_s))
                sender, frames = anyio.create_memory_object_stream[bytes](math.inf)
                self._sender = sender
                self._last_write = anyio.current_time()
                watchdog.watch(self)
                try:
                    tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                    tg.start_soon(self._produce, sender)
                    completed = await self._forward(frames, send)
                    tg.cancel_scope.cancel()
                finally:
                    watchdog.unwatch(self)
            # Only a stream that ran to its end gets the final chunk: after a disconnect
            # there is no one to send it to, and after a send timeout it would block too.
            if completed:
                self.ending = "completed"
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif self.ending != "client_disconnected":
                self.ending = "send_timeout"
        except* OSError:
            # The client went away while we were writing (servers on ASGI spec 2.4 raise
            # here); the task group has already cancelled the run.
            self.ending = "client_disconnected"
        finally:
            if self.on_close is not None:
                with anyio.CancelScope(shield=True):
                    await self.on_close()
            if self.observer is not None:
                self.observer.closed(self.ending)

    async def _produce(self, sender: MemoryObjectSendStream[bytes]) -> None:
        def emit_frame(frame: bytes) -> None:
            # Once the consumer has gone (client gone, stream over) frames are dropped;
            # the cancellation that follows ends the producer.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                sender.send_nowait(frame)

        async with sender:
            await self.producer(emit_frame)

    async def _forward(self, frames: MemoryObjectReceiveStream[bytes], send: Send) -> bool:
        """Send frames until the producer is done (True), or until the send watchdog
        cancels us because the client stopped reading.

        Frames already queued together go out in one write, and no timeout is armed per
        frame (the SendWatchdog times writes): per-event overhead is what bounds streams/s.
        """
        async with frames:
            while True:
                try:
                    body = frames.receive_nowait()
                except anyio.WouldBlock:
                    # No timer here: the watchdog queues a heartbeat after a silence.
                    try:
                        body = await frames.receive()
                    except anyio.EndOfStream:
                        return True
                except anyio.EndOfStream:
                    return True
                if body is HEARTBEAT:
                    if self.observer is not None:
                        self.observer.heartbeat()
                else:
                    body = _with_queued(body, frames)
                started = self._sending_since = anyio.current_time()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                self._sending_since = None
                self._last_write = started

    def tick(self, now: float) -> bool:
        """The watchdog's check: stop a stream whose client has not taken a write within
        send_timeout_s; queue a heartbeat after heartbeat_interval_s without a write."""
        since = self._sending_since
        if since is not None:
            if now - since < self.send_timeout_s:
                return True
            log.warning("stream_send_timeout", send_timeout_s=self.send_timeout_s)
            if self._scope is not None:
                self._scope.cancel()
            return False
        if now - self._last_write >= self.heartbeat_interval_s and self._sender is not None:
            self._last_write = now  # one heartbeat per silence, not one per tick
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._sender.send_nowait(HEARTBEAT)
        return True

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.ending = "client_disconnected"
                scope.cancel()
                return
