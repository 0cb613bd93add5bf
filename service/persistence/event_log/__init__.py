"""Event log: each run's SSE events, kept so a stream can be resumed or joined late.

The run's worker appends its events in batches, numbered 1, 2, 3 ... per run, and finishes
the stream when the run ends; a reader on any worker reads the events after the last one
it saw, and polls or is woken by its own means (nothing here waits). `purge` forgets the
streams of runs that ended long enough ago.

Usable on its own: it knows run ids, not the run registry, so deleting a run leaves its
events to `purge`. The three stores behave identically; on Postgres the retention clock
is the database's.

Layout: `model` (event, protocol, checks) and one module per store: `memory`, `sqlite`,
`postgres`.
"""

from service.persistence.event_log.memory import MemoryEventLog
from service.persistence.event_log.model import (
    MAX_SEQ,
    EventLog,
    LoggedEvent,
    StreamFinished,
)
from service.persistence.event_log.postgres import POSTGRES_SCHEMA, PostgresEventLog
from service.persistence.event_log.sqlite import SQLITE_SCHEMA, SqliteEventLog

__all__ = [
    "MAX_SEQ",
    "POSTGRES_SCHEMA",
    "SQLITE_SCHEMA",
    "EventLog",
    "LoggedEvent",
    "MemoryEventLog",
    "PostgresEventLog",
    "SqliteEventLog",
    "StreamFinished",
]
