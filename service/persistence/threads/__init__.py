"""Thread registry: which owner each thread belongs to, for per-owner listing and isolation.

The checkpointer knows nothing of owners; it files checkpoints under whatever thread id
it is given. So the service never hands it a client's thread id as is: it hands it
`storage_key(owner, thread_id)`, which puts every owner's threads in a namespace of their
own. This registry records, per (owner, client thread id), the graph of the last run, the
client's metadata, the run status and when the thread was created and last used, so an
owner can list and search their threads without scanning (or being able to see) anyone
else's checkpoints.

The three stores behave identically, down to the metadata filter: a thread matches when
its metadata contains the filter as Postgres `jsonb @>` defines it (see `json_contains`).

Layout: `model` (record, protocol, keys, checks), `json_filter` (metadata JSON), `query`
(SQL shared by the SQL stores), and one module per store: `memory`, `sqlite`, `postgres`.
"""

from service.persistence.threads.json_filter import dump_metadata, json_contains
from service.persistence.threads.memory import MemoryThreads
from service.persistence.threads.model import (
    OWNER_NAMESPACE_CHARS,
    SORT_COLUMNS,
    SORT_ORDERS,
    STATUSES,
    ThreadRecord,
    ThreadRegistry,
    owner_namespace,
    storage_key,
)
from service.persistence.threads.postgres import POSTGRES_SCHEMA, PostgresThreads
from service.persistence.threads.sqlite import (
    SQLITE_ADDED_COLUMNS,
    SQLITE_SCHEMA,
    SqliteThreads,
)

__all__ = [
    "OWNER_NAMESPACE_CHARS",
    "POSTGRES_SCHEMA",
    "SORT_COLUMNS",
    "SORT_ORDERS",
    "SQLITE_ADDED_COLUMNS",
    "SQLITE_SCHEMA",
    "STATUSES",
    "MemoryThreads",
    "PostgresThreads",
    "SqliteThreads",
    "ThreadRecord",
    "ThreadRegistry",
    "dump_metadata",
    "json_contains",
    "owner_namespace",
    "storage_key",
]
