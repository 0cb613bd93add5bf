"""The worker's send watchdog: one task ticks every stream; streams stop or heartbeat."""

from __future__ import annotations

import contextlib
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from service.streaming.send_watchdog import SendWatchdog, check_interval
from service.streaming.sse import HEARTBEAT, EventStreamResponse


class Ticks:
    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.seen: list[float] = []

    def tick(self, now: float) -> bool:
        self.seen.append(now)
        return self.answers.pop(0)


def test_every_stream_is_ticked_until_it_says_it_is_ending() -> None:
    now = [10.0]
    watchdog = SendWatchdog(clock=lambda: now[0])
    lasting, ending, gone = Ticks(True, True), Ticks(False), Ticks(True)
    for stream in (lasting, ending, gone):
        watchdog.watch(stream)
    watchdog.unwatch(gone)
    watchdog.check()
    now[0] = 11.0
    watchdog.check()
    assert lasting.seen == [10.0, 11.0]
    assert ending.seen == [10.0]  # told once, then no longer watched
    assert gone.seen == []


def test_the_interval_suits_both_deadlines() -> None:
    assert check_interval(30, 15) == 1.0
    assert check_interval(0.5, 15) == 0.125
    assert check_interval(30, 0.2) == 0.05


def stream(send_timeout_s: float = 30, heartbeat_interval_s: float = 15
           ) -> tuple[EventStreamResponse, MemoryObjectReceiveStream[bytes]]:
    async def producer(emit_frame: object) -> None:
        return None

    response = EventStreamResponse(producer, heartbeat_interval_s=heartbeat_interval_s,
                                   send_timeout_s=send_timeout_s)
    sender, frames = anyio.create_memory_object_stream[bytes](math.inf)
    response._sender = sender
    response._scope = anyio.CancelScope()
    return response, frames


def queued(frames: MemoryObjectReceiveStream[bytes]) -> list[bytes]:
    out = []
    with contextlib.suppress(anyio.WouldBlock):
        while True:
            out.append(frames.receive_nowait())
    return out


def test_a_silent_stream_gets_one_heartbeat_per_silence() -> None:
    async def scenario() -> None:
        response, frames = stream(heartbeat_interval_s=15)
        response._last_write = 100.0
        assert response.tick(110.0) and queued(frames) == []
        assert response.tick(115.0) and queued(frames) == [HEARTBEAT]
        assert response.tick(116.0) and queued(frames) == []  # not again at every tick
        assert response.tick(130.0) and queued(frames) == [HEARTBEAT]

    anyio.run(scenario)


def test_a_write_waiting_past_its_timeout_stops_the_stream() -> None:
    async def scenario() -> None:
        response, frames = stream(send_timeout_s=5)
        scope = response._scope
        assert scope is not None
        response._sending_since = 100.0
        assert response.tick(104.0) and not scope.cancel_called
        assert not response.tick(105.0)
        assert scope.cancel_called
        assert queued(frames) == []  # a stuck write gets no heartbeat queued behind it

    anyio.run(scenario)
