"""The thread registry in process memory."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from service.persistence.threads.json_filter import dump_metadata, json_contains
from service.persistence.threads.model import (
    ThreadRecord,
    check_graph,
    check_ids,
    check_page,
    check_sort,
    check_status,
    utc_now,
)


@dataclass(frozen=True)
class _Held:
    graph: str | None
    created_at: datetime
    updated_at: datetime
    metadata: str  # JSON text, as the SQL stores keep it: each read gets its own copy
    status: str

    def record(self, thread_id: str) -> ThreadRecord:
        return ThreadRecord(thread_id, self.graph, self.created_at, self.updated_at,
                            json.loads(self.metadata), self.status)


class MemoryThreads:
    """For `memory:` storage, which is per-process anyway.

    No method awaits, so each runs whole before any other: that is its atomicity.
    """

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._threads: dict[tuple[str, str], _Held] = {}
        # Each owner's thread ids, so a listing reads that owner's threads, not everyone's.
        self._by_owner: dict[str, set[str]] = {}

    def _put(self, owner: str, thread_id: str, held: _Held) -> _Held:
        self._threads[owner, thread_id] = held
        self._by_owner.setdefault(owner, set()).add(thread_id)
        return held

    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        check_graph(graph)
        if status is not None:
            check_status(status)
        now = self._clock()
        held = self._threads.get((owner, thread_id))
        if held is None:
            self._put(owner, thread_id, _Held(graph, now, now, "{}", status or "idle"))
        else:
            self._threads[owner, thread_id] = replace(
                held, graph=graph, updated_at=max(held.updated_at, now),
                status=held.status if status is None else status)

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        text = dump_metadata(metadata)
        if (owner, thread_id) in self._threads:
            return None
        now = self._clock()
        return self._put(owner, thread_id, _Held(None, now, now, text, "idle")).record(thread_id)

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        held = self._threads.get((owner, thread_id))
        return None if held is None else held.record(thread_id)

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        patch = json.loads(dump_metadata({} if metadata is None else metadata))
        held = self._threads.get((owner, thread_id))
        if held is None:
            return None
        merged = dump_metadata({**json.loads(held.metadata), **patch})
        held = self._threads[owner, thread_id] = replace(
            held, metadata=merged, updated_at=max(held.updated_at, self._clock()))
        return held.record(thread_id)

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        check_status(status)
        held = self._threads.get((owner, thread_id))
        if held is not None:
            self._threads[owner, thread_id] = replace(
                held, status=status, updated_at=max(held.updated_at, self._clock()))

    def _matching(
        self,
        owner: str,
        metadata: dict[str, Any] | None,
        status: str | None,
        ids: builtins.list[str] | None,
    ) -> builtins.list[tuple[str, _Held]]:
        # Through JSON and back, so the filter compares exactly as stored values do.
        query = None if metadata is None else json.loads(dump_metadata(metadata))
        if status is not None:
            check_status(status)
        if ids is not None:
            check_ids(ids)
        mine = self._by_owner.get(owner, set())
        candidates = mine if ids is None else mine.intersection(ids)
        found = []
        for thread_id in candidates:
            held = self._threads[owner, thread_id]
            if status is not None and held.status != status:
                continue
            if query is None or json_contains(json.loads(held.metadata), query):
                found.append((thread_id, held))
        return found

    async def search(
        self,
        owner: str,
        *,
        metadata: dict[str, Any] | None = None,
        status: str | None = None,
        ids: builtins.list[str] | None = None,
        limit: int,
        offset: int = 0,
        sort_by: str = "updated_at",
        sort_order: str = "desc",
    ) -> builtins.list[ThreadRecord]:
        check_page(limit, offset)
        check_sort(sort_by, sort_order)
        found = self._matching(owner, metadata, status, ids)
        # Two stable sorts: by thread id, then by the key, keeping ties in id order
        # (reverse=True keeps equal items in their order too). Records (and their
        # metadata copies) are made for the page only.
        found.sort(key=lambda item: item[0])
        if sort_by != "thread_id":
            found.sort(key=lambda item: getattr(item[1], sort_by),
                       reverse=sort_order == "desc")
        elif sort_order == "desc":
            found.reverse()
        return [held.record(thread_id) for thread_id, held in found[offset : offset + limit]]

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        return len(self._matching(owner, metadata, status, None))

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        return await self.search(owner, limit=limit, offset=offset)

    async def delete(self, owner: str, thread_id: str) -> bool:
        self._by_owner.get(owner, set()).discard(thread_id)
        return self._threads.pop((owner, thread_id), None) is not None
