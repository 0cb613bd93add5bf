"""The run record, the registry protocol, and the checks every store applies alike."""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from service.persistence.threads.json_filter import dump_metadata

RUN_STATUSES = ("pending", "running", "success", "error", "timeout", "interrupted")
CANCEL_ACTIONS = ("interrupt", "rollback")


class RunExists(Exception):
    """`create` was given a run id that is already stored (for any owner)."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str  # uuid string
    thread_id: str  # the client-facing thread id, not the storage key
    assistant_id: str
    graph: str
    status: str  # one of RUN_STATUSES
    # Fresh objects per record read: changing them changes nothing stored.
    metadata: dict[str, Any]
    kwargs: dict[str, Any]  # the run's options as JSON (stream_mode, on_disconnect, ...)
    multitask_strategy: str
    created_at: datetime  # timezone-aware, UTC; stamped by the store on create
    updated_at: datetime  # timezone-aware, UTC


class RunRegistry(Protocol):
    async def create(self, owner: str, record: RunRecord) -> None:
        """Store a new run for `owner`. The store stamps created_at and updated_at with its
        own clock (the database's on Postgres); the record's are not used.

        Raises:
            RunExists: a run with this id is stored already, whoever owns it.
            ValueError, TypeError: a value no store could hold (see `check_record`).
        """

    async def get(self, owner: str, thread_id: str, run_id: str) -> RunRecord | None:
        """This owner's run on this thread; None for another owner's or another thread's."""

    async def get_any(self, owner: str, run_id: str) -> RunRecord | None:
        """This owner's run by id alone, whatever its thread (stateless runs)."""

    async def list(
        self, owner: str, thread_id: str, *, limit: int, offset: int = 0,
        status: str | None = None,
    ) -> builtins.list[RunRecord]:
        """This owner's runs on the thread, with that status if given: newest first (by
        created_at), ties in run id order, then paged."""

    async def set_status(self, run_id: str, status: str) -> None:
        """Set the run's status and bump updated_at; nothing if there is no such run."""

    async def request_cancel(
        self, owner: str, thread_id: str, run_id: str, action: str
    ) -> RunRecord | None:
        """Record a cancel request ("interrupt" or "rollback"; a later request replaces an
        earlier one) and bump updated_at; the record, or None if this owner has no such run
        on this thread. The status is left to the run's worker."""

    async def cancel_requested(self, run_id: str) -> str | None:
        """The action of the latest cancel request for the run, or None."""

    async def delete(self, owner: str, thread_id: str, run_id: str) -> bool:
        """Forget this owner's run; True if there was one. Its event log is not touched."""

    async def delete_thread(self, owner: str, thread_id: str) -> int:
        """Forget every run this owner has on the thread; how many there were."""


def check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {list(RUN_STATUSES)}")


def check_action(action: str) -> None:
    if action not in CANCEL_ACTIONS:
        raise ValueError(f"cancel action must be one of {list(CANCEL_ACTIONS)}")


def _check_keys(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("kwargs object keys must be strings")
            _check_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item)


def dump_kwargs(kwargs: dict[str, Any]) -> str:
    """The run's options as the JSON text every store keeps.

    Unlike metadata (which is searchable, so held as jsonb, so free of NUL characters and
    lone surrogates), kwargs carry client config and context as given: the text is ASCII
    with every such character escaped, which all three stores hold as is. Refused alike:
    anything not JSON (TypeError), NaN and infinities (ValueError), non-string keys.
    """
    if not isinstance(kwargs, dict):
        raise TypeError("kwargs must be a JSON object")
    _check_keys(kwargs)
    return json.dumps(kwargs, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def check_record(owner: str, record: RunRecord) -> tuple[str, str]:
    """Check what `create` stores; the metadata and kwargs JSON texts to store.

    Text columns refuse NUL characters (Postgres cannot hold them), so every store does.
    """
    texts = {"owner": owner, **{name: getattr(record, name) for name in (
        "run_id", "thread_id", "assistant_id", "graph", "multitask_strategy")}}
    for name, value in texts.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        if "\x00" in value:
            raise ValueError(f"{name} must not contain NUL characters")
        value.encode("utf-8")  # UnicodeEncodeError, a ValueError, on a lone surrogate
    if not record.run_id:
        raise ValueError("run_id must not be empty")
    check_status(record.status)
    return dump_metadata(record.metadata), dump_kwargs(record.kwargs)
