"""Run registry: the agent-protocol runs of each owner's threads, shared by every worker.

A run's record (its status, options and any cancel request) lives here so that any worker
or replica can show, list, join or cancel it, whichever one executes it. Every read is
scoped to the owner (and, but for `get_any`, the thread), so one owner's run ids name
nothing for another. `set_status` and `cancel_requested` take the run id alone: they are
for the worker running the run, which already holds its record.

The three stores behave identically; on Postgres the timestamps come from the database
clock, so replicas agree on the order of runs.

Layout: `model` (record, protocol, checks) and one module per store: `memory`, `sqlite`,
`postgres`.
"""

from service.persistence.runs.memory import MemoryRuns
from service.persistence.runs.model import (
    CANCEL_ACTIONS,
    RUN_STATUSES,
    RunExists,
    RunRecord,
    RunRegistry,
)
from service.persistence.runs.postgres import POSTGRES_SCHEMA, PostgresRuns
from service.persistence.runs.sqlite import SQLITE_SCHEMA, SqliteRuns

__all__ = [
    "CANCEL_ACTIONS",
    "POSTGRES_SCHEMA",
    "RUN_STATUSES",
    "SQLITE_SCHEMA",
    "MemoryRuns",
    "PostgresRuns",
    "RunExists",
    "RunRecord",
    "RunRegistry",
    "SqliteRuns",
]
