"""One task per worker notices event streams whose client stopped reading.

A client that keeps its socket open but stops reading makes a stream's write wait for
ever, holding its run, its lease and everything the run has buffered. Each stream notes
when its pending write began; the watchdog looks at every open stream once a second and
stops those whose write has waited `send_timeout_s`. One task for all streams: a timer
or task per stream costs memory per open stream and wake-ups while nothing is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio

CHECK_INTERVAL_S = 1.0


class WatchedStream(Protocol):
    send_timeout_s: float

    @property
    def sending_since(self) -> float | None:
        """When the write in progress began, or None when no write is waiting."""

    def send_timed_out(self) -> None:
        """Stop the stream: its client is not reading."""


class SendWatchdog:
    """Times every open stream's writes; `run` it in a task for as long as streams live."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self._clock = clock
        self._streams: set[WatchedStream] = set()

    def watch(self, stream: WatchedStream) -> None:
        self._streams.add(stream)

    def unwatch(self, stream: WatchedStream) -> None:
        self._streams.discard(stream)

    def check(self) -> None:
        """Stop every stream whose write has waited its send timeout."""
        now = self._clock()
        for stream in list(self._streams):
            since = stream.sending_since
            if since is not None and now - since >= stream.send_timeout_s:
                self._streams.discard(stream)
                stream.send_timed_out()

    async def run(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        while True:
            await anyio.sleep(interval_s)
            self.check()
