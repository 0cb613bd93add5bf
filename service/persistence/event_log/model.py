"""The logged event, the event log protocol, and the checks every store applies alike."""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# The largest seq every store can hold (Postgres bigint, SQLite INTEGER).
MAX_SEQ = 2**63 - 1


class StreamFinished(Exception):
    """`append` to a run whose stream was finished: the events were not logged."""


@dataclass(frozen=True)
class LoggedEvent:
    seq: int  # 1, 2, 3 ... per run, assigned by the caller
    event: str  # SSE event name
    data: bytes  # one-line JSON; stored and returned as opaque bytes


class EventLog(Protocol):
    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        """Log a batch of the run's events, seqs strictly increasing within the batch.

        Idempotent per (run_id, seq): an event whose seq is logged already is skipped, so a
        retried batch adds nothing twice (the first write of a seq wins). Readers see a
        batch whole or, past a few hundred events on SQLite, in ascending prefixes.

        Raises:
            StreamFinished: the run's stream was finished; nothing was logged.
            ValueError, TypeError: a malformed batch; nothing was logged.
        """

    async def read(
        self, run_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[LoggedEvent]:
        """Up to `limit` of the run's events with seq > `after`, ascending."""

    async def last_seq(self, run_id: str) -> int:
        """The highest seq logged for the run; 0 when none."""

    async def finish(self, run_id: str) -> None:
        """Mark the run's stream over: later appends raise StreamFinished. Records the
        time for `purge`; finishing again keeps the first time."""

    async def is_finished(self, run_id: str) -> bool:
        """Whether `finish` was called for the run (and not purged since)."""

    async def purge(
        self, older_than_s: float, *, unfinished_older_than_s: float | None = None
    ) -> int:
        """Delete the events and stream markers of runs finished at least `older_than_s`
        ago; with `unfinished_older_than_s`, also of runs never finished whose first
        append was at least that long ago (their worker died). How many rows went, events
        and markers together."""


def check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str):
        raise TypeError("run_id must be a string")
    if not run_id or "\x00" in run_id:
        raise ValueError("run_id must be non-empty and free of NUL characters")
    run_id.encode("utf-8")  # UnicodeEncodeError, a ValueError, on a lone surrogate


def check_batch(run_id: str, events: Sequence[LoggedEvent]) -> None:
    """Refuse, before anything is written, what some store could not hold."""
    check_run_id(run_id)
    previous = 0
    for event in events:
        if not isinstance(event, LoggedEvent):
            raise TypeError("events must be LoggedEvent instances")
        seq = event.seq
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError("seq must be an int")
        if not previous < seq <= MAX_SEQ:
            raise ValueError("seqs must be positive and strictly increasing within a batch")
        previous = seq
        if not isinstance(event.event, str):
            raise TypeError("event name must be a string")
        if "\x00" in event.event:
            raise ValueError("event name must not contain NUL characters")
        event.event.encode("utf-8")
        if not isinstance(event.data, bytes):
            raise TypeError("event data must be bytes")


def check_read(after: int, limit: int) -> None:
    for value in (after, limit):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("after and limit must be ints")
    # Backends disagree on a negative limit (SQLite: "no limit", Postgres: an error).
    if limit < 0:
        raise ValueError("limit must not be negative")


def check_ages(older_than_s: float, unfinished_older_than_s: float | None) -> None:
    for age in (older_than_s, unfinished_older_than_s):
        if age is not None and not (age >= 0 and math.isfinite(age)):
            raise ValueError("ages must be finite and not negative")
