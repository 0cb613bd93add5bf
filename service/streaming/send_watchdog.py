"""One task per worker watches every open event stream's writes and silences.

A client that keeps its socket open but stops reading makes a stream's write wait for
ever, holding its run, its lease and everything the run has buffered; and a stream with
nothing to say for a while must still send a heartbeat comment, or proxies with read
timeouts cut it. Each stream notes when its pending write began and when it last wrote;
the watchdog ticks every stream about once a second, and the stream stops itself
(`send_timeout_s`) or queues a heartbeat (`heartbeat_interval_s`). One task for all
streams: a timer per stream, re-armed at every wait, costs memory per open stream and,
with thousands open, most of the CPU they use while nothing is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio

CHECK_INTERVAL_S = 1.0


def check_interval(send_timeout_s: float, heartbeat_interval_s: float) -> float:
    """How often to tick: often enough for both deadlines, at most once a second."""
    return min(CHECK_INTERVAL_S, send_timeout_s / 4, heartbeat_interval_s / 4)


class WatchedStream(Protocol):
    def tick(self, now: float) -> bool:
        """Check the stream's deadlines at `now`; False: it is ending, stop watching it."""


class SendWatchdog:
    """Ticks every open stream; `run` it in a task for as long as streams live."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self._clock = clock
        self._streams: set[WatchedStream] = set()

    def watch(self, stream: WatchedStream) -> None:
        self._streams.add(stream)

    def unwatch(self, stream: WatchedStream) -> None:
        self._streams.discard(stream)

    def check(self) -> None:
        """Tick every stream once."""
        now = self._clock()
        for stream in list(self._streams):
            if not stream.tick(now):
                self._streams.discard(stream)

    async def run(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        while True:
            await anyio.sleep(interval_s)
            self.check()
