"""The event log in process memory."""

from __future__ import annotations

import bisect
import builtins
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.persistence.event_log.model import (
    LoggedEvent,
    StreamFinished,
    check_ages,
    check_batch,
    check_read,
    check_run_id,
)


@dataclass
class _Stream:
    created_at: float
    finished_at: float | None = None
    events: list[LoggedEvent] = field(default_factory=list)  # ascending seq


class MemoryEventLog:
    """For `memory:` storage, which is per-process anyway.

    Plain dicts and lists, nothing to wait on: the caller wakes its own readers. No method
    awaits, so each runs whole before any other: that is its atomicity.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._streams: dict[str, _Stream] = {}

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        check_batch(run_id, events)
        if not events:
            return
        stream = self._streams.get(run_id)
        if stream is None:
            stream = self._streams[run_id] = _Stream(self._clock())
        if stream.finished_at is not None:
            raise StreamFinished(run_id)
        held = stream.events
        for event in events:
            if not held or event.seq > held[-1].seq:
                held.append(event)  # the usual case: the next events, in order
                continue
            at = bisect.bisect_left(held, event.seq, key=lambda logged: logged.seq)
            if held[at].seq != event.seq:
                held.insert(at, event)

    async def read(
        self, run_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[LoggedEvent]:
        check_read(after, limit)
        stream = self._streams.get(run_id)
        if stream is None:
            return []
        start = bisect.bisect_right(stream.events, after, key=lambda logged: logged.seq)
        return stream.events[start : start + limit]

    async def last_seq(self, run_id: str) -> int:
        stream = self._streams.get(run_id)
        return stream.events[-1].seq if stream is not None and stream.events else 0

    async def finish(self, run_id: str) -> None:
        check_run_id(run_id)
        now = self._clock()
        stream = self._streams.setdefault(run_id, _Stream(now))
        if stream.finished_at is None:
            stream.finished_at = now

    async def is_finished(self, run_id: str) -> bool:
        stream = self._streams.get(run_id)
        return stream is not None and stream.finished_at is not None

    async def purge(
        self, older_than_s: float, *, unfinished_older_than_s: float | None = None
    ) -> int:
        check_ages(older_than_s, unfinished_older_than_s)
        now = self._clock()
        doomed = [
            run_id for run_id, stream in self._streams.items()
            if (stream.finished_at is not None and stream.finished_at <= now - older_than_s)
            or (stream.finished_at is None and unfinished_older_than_s is not None
                and stream.created_at <= now - unfinished_older_than_s)
        ]
        deleted = 0
        for run_id in doomed:
            deleted += len(self._streams.pop(run_id).events) + 1
        return deleted
