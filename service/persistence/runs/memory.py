"""The run registry in process memory."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from service.persistence.runs.model import (
    RunExists,
    RunRecord,
    check_action,
    check_record,
    check_status,
)
from service.persistence.threads.model import check_page, utc_now


@dataclass(frozen=True)
class _Held:
    owner: str
    record: RunRecord  # metadata and kwargs as stored: never handed out
    metadata: str  # JSON text, as the SQL stores keep it: each read gets its own copy
    kwargs: str
    cancel_action: str | None = None

    def read(self) -> RunRecord:
        return replace(self.record, metadata=json.loads(self.metadata),
                       kwargs=json.loads(self.kwargs))


class MemoryRuns:
    """For `memory:` storage, which is per-process anyway.

    No method awaits, so each runs whole before any other: that is its atomicity.
    """

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._runs: dict[str, _Held] = {}

    def _mine(self, owner: str, thread_id: str, run_id: str) -> _Held | None:
        held = self._runs.get(run_id)
        if held is None or held.owner != owner or held.record.thread_id != thread_id:
            return None
        return held

    def _bumped(self, held: _Held, *, status: str | None = None) -> _Held:
        # max(): a clock stepped back must not move a run backwards in time.
        updated_at = max(held.record.updated_at, self._clock())
        record = replace(held.record, updated_at=updated_at,
                         status=held.record.status if status is None else status)
        held = replace(held, record=record)
        self._runs[held.record.run_id] = held
        return held

    async def create(self, owner: str, record: RunRecord) -> None:
        metadata, kwargs = check_record(owner, record)
        if record.run_id in self._runs:
            raise RunExists(record.run_id)
        now = self._clock()
        stamped = replace(record, metadata={}, kwargs={}, created_at=now, updated_at=now)
        self._runs[record.run_id] = _Held(owner, stamped, metadata, kwargs)

    async def get(self, owner: str, thread_id: str, run_id: str) -> RunRecord | None:
        held = self._mine(owner, thread_id, run_id)
        return None if held is None else held.read()

    async def get_any(self, owner: str, run_id: str) -> RunRecord | None:
        held = self._runs.get(run_id)
        return None if held is None or held.owner != owner else held.read()

    async def list(
        self, owner: str, thread_id: str, *, limit: int, offset: int = 0,
        status: str | None = None,
    ) -> builtins.list[RunRecord]:
        check_page(limit, offset)
        if status is not None:
            check_status(status)
        found = [
            held.record for held in self._runs.values()
            if held.owner == owner and held.record.thread_id == thread_id
            and (status is None or held.record.status == status)
        ]
        # Two stable sorts: by run id, then newest first, keeping ties in run id order.
        found.sort(key=lambda record: record.run_id)
        found.sort(key=lambda record: record.created_at, reverse=True)
        return [self._runs[record.run_id].read() for record in found[offset : offset + limit]]

    async def set_status(self, run_id: str, status: str) -> None:
        check_status(status)
        held = self._runs.get(run_id)
        if held is not None:
            self._bumped(held, status=status)

    async def request_cancel(
        self, owner: str, thread_id: str, run_id: str, action: str
    ) -> RunRecord | None:
        check_action(action)
        held = self._mine(owner, thread_id, run_id)
        if held is None:
            return None
        held = self._bumped(replace(held, cancel_action=action))
        return held.read()

    async def cancel_requested(self, run_id: str) -> str | None:
        held = self._runs.get(run_id)
        return None if held is None else held.cancel_action

    async def delete(self, owner: str, thread_id: str, run_id: str) -> bool:
        if self._mine(owner, thread_id, run_id) is None:
            return False
        del self._runs[run_id]
        return True

    async def delete_thread(self, owner: str, thread_id: str) -> int:
        doomed = [
            run_id for run_id, held in self._runs.items()
            if held.owner == owner and held.record.thread_id == thread_id
        ]
        for run_id in doomed:
            del self._runs[run_id]
        return len(doomed)
