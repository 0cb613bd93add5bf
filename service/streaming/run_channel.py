"""A run's encoded events, held in this process for the readers following it.

The run's task pushes every event in; each reader (an SSE response, a `wait`, a join)
follows from its own cursor. Events every reader has taken are dropped, so a long reply
is not held in memory for the run's whole life; for a durable run (resumable stream or
background run) they are dropped only once they are also in the shared event log, so a
reader that falls behind, or reconnects with `Last-Event-ID`, finds them there.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import anyio

from service.persistence.event_log import LoggedEvent


@dataclass
class Reader:
    """One follower's position: the sequence number of the last event it has taken."""

    cursor: int


class RunChannel:
    def __init__(self, *, durable: bool) -> None:
        self.durable = durable
        self.frames: deque[LoggedEvent] = deque()
        self.last_seq = 0
        # Highest sequence number known to be in the event log (durable runs only).
        self.logged_seq = 0
        self.done = False
        self._changed = anyio.Event()
        self._readers: dict[int, Reader] = {}
        self._ids = itertools.count()

    @property
    def first_held(self) -> int:
        """The sequence number of the oldest event still held here."""
        return self.frames[0].seq if self.frames else self.last_seq + 1

    def push(self, event: LoggedEvent) -> None:
        self.last_seq = event.seq
        # With no reader and no log to feed (a client gone, the run going on), nobody
        # will ever take it: keep nothing.
        if self._readers or self.durable:
            self.frames.append(event)
        self._wake()

    def logged(self, seq: int) -> None:
        """Events up to `seq` are in the event log (or never will be): droppable."""
        self.logged_seq = max(self.logged_seq, seq)
        self._trim()

    def close(self) -> None:
        self.done = True
        self._wake()

    def open_reader(self, after: int) -> tuple[int, Reader]:
        token = next(self._ids)
        reader = self._readers[token] = Reader(after)
        return token, reader

    def reader(self, token: int) -> Reader:
        return self._readers[token]

    def close_reader(self, token: int) -> None:
        self._readers.pop(token, None)
        self._trim()

    def take(self, reader: Reader) -> list[LoggedEvent]:
        """The held events after the reader's cursor (advancing it)."""
        if not self.frames or reader.cursor >= self.last_seq:
            return []
        start = max(reader.cursor + 1 - self.frames[0].seq, 0)
        taken = list(itertools.islice(self.frames, start, None))
        reader.cursor = self.last_seq
        self._trim()
        return taken

    async def changed(self) -> None:
        """Wait until an event is pushed or the run ends."""
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _trim(self) -> None:
        floor = min((r.cursor for r in self._readers.values()), default=self.last_seq)
        if self.durable:
            floor = min(floor, self.logged_seq)
        while self.frames and self.frames[0].seq <= floor:
            self.frames.popleft()
