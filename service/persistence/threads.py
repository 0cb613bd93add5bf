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
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import aiosqlite

from service.persistence.leases import Pool

# 128 bits of SHA-256: collisions between owners are out of reach, and the key stays short.
OWNER_NAMESPACE_CHARS = 32

STATUSES = frozenset({"idle", "busy", "interrupted", "error"})
SORT_COLUMNS = ("thread_id", "status", "created_at", "updated_at")
SORT_ORDERS = ("asc", "desc")


def owner_namespace(owner: str) -> str:
    """A fixed-length, opaque stand-in for the owner in storage keys.

    Hashed rather than embedded so that owner strings (tenant and user names) do not
    appear in checkpoint tables, and so that no owner can contain a '.' that shifts the
    boundary between namespace and thread id.
    """
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:OWNER_NAMESPACE_CHARS]


def storage_key(owner: str, thread_id: str) -> str:
    """The thread id the checkpointer sees for this owner's thread.

    Client thread ids are validated upstream as ^[A-Za-z0-9_-]{1,64}$; refusing '.' here
    as well means that, even if that validation were bypassed, a client-chosen id could
    never name a key inside another owner's namespace.
    """
    if "." in thread_id:
        raise ValueError("thread id must not contain '.'")
    return f"{owner_namespace(owner)}.{thread_id}"


@dataclass(frozen=True)
class ThreadRecord:
    # The first four fields keep their positions, for callers that build records by position.
    thread_id: str  # the client-facing id, not the storage key
    graph: str | None  # graph name of the last run; None until the first run
    created_at: datetime  # timezone-aware, UTC
    updated_at: datetime  # timezone-aware, UTC
    # A fresh object per record read: changing it changes nothing stored.
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "idle"  # one of STATUSES


class ThreadRegistry(Protocol):
    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        """Record a run: insert the thread if new (metadata {}, status idle), else set its
        graph and updated_at; with `status`, set that too, in the same statement."""

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        """A new idle thread with no graph yet; None, changing nothing, if this owner
        already has that thread id."""

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        """This owner's thread, or None (also when another owner has that thread id)."""

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        """Merge `metadata` into the thread's (top-level keys overwrite, null values are
        kept) and bump updated_at; the new record, or None if the owner has no such thread."""

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        """Set the thread's status and bump updated_at; nothing if there is no such thread."""

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
        """This owner's threads whose metadata contains `metadata`, with that status and
        among those ids, sorted by `sort_by` (one of SORT_COLUMNS) in `sort_order`
        ("asc" or "desc"), ties in thread id order, then paged."""

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        """How many threads `search` would find with these filters and no paging."""

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        """This owner's threads, most recently updated first, ties by thread id."""

    async def delete(self, owner: str, thread_id: str) -> bool:
        """Forget this owner's thread; True if there was one."""


def _check_page(limit: int, offset: int) -> None:
    # Backends disagree on negative values (SQLite: "no limit", Postgres: an error).
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}")


def _check_graph(graph: str) -> None:
    # SQLite stores "no graph yet" as '' (see SqliteThreads), so '' cannot be a name.
    if not graph:
        raise ValueError("graph name must not be empty")


def _check_ids(ids: builtins.list[str]) -> None:
    # Postgres would reject anything but text in its text[] parameter; refuse it everywhere.
    if not all(isinstance(thread_id, str) for thread_id in ids):
        raise TypeError("ids must be strings")


def _check_sort(sort_by: str, sort_order: str) -> None:
    if sort_by not in SORT_COLUMNS:
        raise ValueError(f"sort_by must be one of {list(SORT_COLUMNS)}")
    if sort_order not in SORT_ORDERS:
        raise ValueError(f"sort_order must be one of {list(SORT_ORDERS)}")


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("metadata strings must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("metadata object keys must be strings")
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_strings(item)


def dump_metadata(metadata: dict[str, Any]) -> str:
    """`metadata` as the JSON text every store keeps, or an error for what one cannot.

    Refused in every store alike, so that no store accepts what another would reject:
    anything not JSON (TypeError), NaN and infinities, NUL characters and lone surrogates
    (ValueError; Postgres' jsonb holds none of these), and non-string keys, which JSON
    would silently turn into strings.
    """
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a JSON object")
    _check_strings(metadata)
    text = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text.encode("utf-8")  # UnicodeEncodeError, a ValueError, on a lone surrogate
    return text


def json_contains(doc: Any, query: Any) -> bool:
    """Whether `doc` contains `query`, as Postgres' `jsonb @> jsonb` decides it.

    Objects contain objects whose every key they have, with a contained value; arrays
    contain arrays whose every element is contained in some element of theirs, regardless
    of order and repetition; scalars match equal scalars of the same JSON type, numbers by
    numeric value (1 matches 1.0; true never matches 1; "1" never matches 1). (Postgres'
    one exception, a top-level array containing a bare scalar, cannot arise: metadata and
    filters are objects.)
    """
    if isinstance(query, dict):
        return isinstance(doc, dict) and all(
            key in doc and json_contains(doc[key], value) for key, value in query.items()
        )
    if isinstance(query, list):
        return isinstance(doc, list) and all(
            any(json_contains(item, wanted) for item in doc) for wanted in query
        )
    if query is None or isinstance(query, bool):
        return doc is query
    if isinstance(query, int | float):
        return isinstance(doc, int | float) and not isinstance(doc, bool) and doc == query
    return isinstance(doc, str) and doc == query


def _utc_now() -> datetime:
    return datetime.now(UTC)


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

    def __init__(self, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._threads: dict[tuple[str, str], _Held] = {}

    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        _check_graph(graph)
        if status is not None:
            _check_status(status)
        now = self._clock()
        held = self._threads.get((owner, thread_id))
        if held is None:
            self._threads[owner, thread_id] = _Held(graph, now, now, "{}", status or "idle")
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
        held = self._threads[owner, thread_id] = _Held(None, now, now, text, "idle")
        return held.record(thread_id)

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
        _check_status(status)
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
    ) -> builtins.list[ThreadRecord]:
        # Through JSON and back, so the filter compares exactly as stored values do.
        query = None if metadata is None else json.loads(dump_metadata(metadata))
        if status is not None:
            _check_status(status)
        if ids is not None:
            _check_ids(ids)
        wanted = None if ids is None else set(ids)
        found = []
        for (held_owner, thread_id), held in self._threads.items():
            if held_owner != owner or (wanted is not None and thread_id not in wanted):
                continue
            if status is not None and held.status != status:
                continue
            record = held.record(thread_id)
            if query is None or json_contains(record.metadata, query):
                found.append(record)
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
        _check_page(limit, offset)
        _check_sort(sort_by, sort_order)
        found = self._matching(owner, metadata, status, ids)
        # Two stable sorts: by thread id, then by the key, keeping ties in id order
        # (reverse=True keeps equal items in their order too).
        found.sort(key=lambda record: record.thread_id)
        found.sort(key=lambda record: getattr(record, sort_by), reverse=sort_order == "desc")
        return found[offset : offset + limit]

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        return len(self._matching(owner, metadata, status, None))

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        return await self.search(owner, limit=limit, offset=offset)

    async def delete(self, owner: str, thread_id: str) -> bool:
        return self._threads.pop((owner, thread_id), None) is not None


# What search() selects; the fixed statements spell the same list out.
_COLUMNS = "thread_id, graph, created_at, updated_at, metadata, status"


def _order_by(sort_by: str, sort_order: str) -> str:
    """The ORDER BY clause, built only from the fixed names above, never from input."""
    _check_sort(sort_by, sort_order)
    column = SORT_COLUMNS[SORT_COLUMNS.index(sort_by)]
    direction = "ASC" if sort_order == "asc" else "DESC"
    if column == "thread_id":
        return f" ORDER BY thread_id {direction}"
    return f" ORDER BY {column} {direction}, thread_id ASC"


@dataclass(frozen=True)
class _Dialect:
    """How one SQL store spells each search filter; every value is a bound parameter."""

    owner: str
    status: str
    metadata: str
    ids: str
    ids_param: Callable[[builtins.list[str]], Any]


def _where(
    dialect: _Dialect,
    owner: str,
    metadata: dict[str, Any] | None,
    status: str | None,
    ids: builtins.list[str] | None,
) -> tuple[str, builtins.list[Any]]:
    # The owner condition always comes first: no filter can widen a search past it.
    clauses, params = [dialect.owner], [owner]
    if metadata is not None:
        clauses.append(dialect.metadata)
        params.append(dump_metadata(metadata))
    if status is not None:
        _check_status(status)
        clauses.append(dialect.status)
        params.append(status)
    if ids is not None:
        _check_ids(ids)
        clauses.append(dialect.ids)
        params.append(dialect.ids_param(ids))
    return " WHERE " + " AND ".join(clauses), params


# Timestamps are UTC epoch seconds (REAL, as in the lease table): they sort numerically,
# and a double still resolves well under a microsecond for present-day times. Metadata is
# the JSON text from dump_metadata, kept as written so values read back exactly.
#
# graph stays NOT NULL, with '' for "no run yet": tables from before the column could be
# empty were made NOT NULL, and SQLite can only drop that by rebuilding the table, which
# would have to be coordinated with every worker sharing the file. Graph names are never
# empty (checked in touch), so '' is unambiguous. One representation, old files and new.
SQLITE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_threads (
        owner TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        graph TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'idle',
        PRIMARY KEY (owner, thread_id)
    )
    """,
    # Serves list(): one owner's rows, already in the order they are returned.
    "CREATE INDEX IF NOT EXISTS graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
)

# Columns added since the first release, added to older files by setup().
SQLITE_ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("metadata", "ALTER TABLE graphgate_threads ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'"),
    ("status", "ALTER TABLE graphgate_threads ADD COLUMN status TEXT NOT NULL DEFAULT 'idle'"),
)


# One search calls the filter once per row, always with the same query text; the parsed
# query is shared, which is safe because json_contains only reads it.
_parsed_query = functools.lru_cache(maxsize=64)(json.loads)


def _sqlite_contains(metadata: str, query: str) -> bool:
    return json_contains(json.loads(metadata), _parsed_query(query))


def _sqlite_merge(metadata: str, patch: str) -> str:
    return dump_metadata({**json.loads(metadata), **json.loads(patch)})


# Metadata is filtered and merged by the Python functions the memory store uses, registered
# on the connection. In plain SQLite SQL neither is exact: json_patch drops null values and
# merges nested objects (jsonb || does neither); JSON paths in SQLite 3.40 cannot name a key
# containing '"' and their quoting changed in 3.45; and containment of nested arrays would
# take generated, recursive json_each queries. As functions they stay single statements,
# and LIMIT, OFFSET and count(*) stay in SQL.
_SQLITE = _Dialect(
    owner="owner = ?",
    status="status = ?",
    metadata="graphgate_json_contains(metadata, ?)",
    ids="thread_id IN (SELECT value FROM json_each(?))",
    ids_param=lambda ids: json.dumps(list(ids)),
)


def _sqlite_record(row: Any) -> ThreadRecord:
    thread_id, graph, created_at, updated_at, metadata, status = row
    return ThreadRecord(
        thread_id,
        graph or None,
        datetime.fromtimestamp(created_at, UTC),
        datetime.fromtimestamp(updated_at, UTC),
        json.loads(metadata),
        status,
    )


class SqliteThreads:
    """The registry in the SQLite file, so several local workers share it.

    Runs on the autocommit connection the leases use, not the checkpointer's: that one
    runs its own transactions and must not have ours committed in the middle of them.
    Every operation is a single statement, so autocommit makes each one atomic.
    `setup()` must run first: it also registers the metadata functions on the connection.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    async def setup(self) -> None:
        await self._conn.create_function(
            "graphgate_json_contains", 2, _sqlite_contains, deterministic=True)
        await self._conn.create_function(
            "graphgate_json_merge", 2, _sqlite_merge, deterministic=True)
        # One transaction, holding the write lock from the start: workers sharing the file
        # start together, and without it two could both see a column missing and the second
        # ALTER would fail. Nothing else uses the connection before setup returns.
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SQLITE_SCHEMA:
                await self._conn.execute(statement)
            rows = await self._conn.execute_fetchall("PRAGMA table_info(graphgate_threads)")
            present = {row[1] for row in rows}
            for column, statement in SQLITE_ADDED_COLUMNS:
                if column not in present:
                    await self._conn.execute(statement)
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise
        await self._conn.execute("COMMIT")

    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        _check_graph(graph)
        if status is not None:
            _check_status(status)
        now = self._clock()
        # max(): a wall clock stepped back (NTP) or another worker's slightly slower
        # clock must not move a thread backwards in the listing.
        await self._conn.execute(
            "INSERT INTO graphgate_threads"
            " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
            " VALUES (?, ?, ?, ?, ?, '{}', coalesce(?, 'idle'))"
            " ON CONFLICT (owner, thread_id) DO UPDATE SET graph = excluded.graph,"
            " updated_at = max(graphgate_threads.updated_at, excluded.updated_at),"
            " status = coalesce(?, graphgate_threads.status)",
            (owner, thread_id, graph, now, now, status, status),
        )

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        text = dump_metadata(metadata)
        now = self._clock()
        # execute_fetchall runs and drains the statement in one step, so no other
        # statement on the shared connection can interleave with a half-read cursor.
        rows = await self._conn.execute_fetchall(
            "INSERT INTO graphgate_threads"
            " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
            " VALUES (?, ?, '', ?, ?, ?, 'idle')"
            " ON CONFLICT (owner, thread_id) DO NOTHING"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (owner, thread_id, now, now, text),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        rows = await self._conn.execute_fetchall(
            "SELECT thread_id, graph, created_at, updated_at, metadata, status"
            " FROM graphgate_threads WHERE owner = ? AND thread_id = ?",
            (owner, thread_id),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        patch = dump_metadata({} if metadata is None else metadata)
        rows = await self._conn.execute_fetchall(
            "UPDATE graphgate_threads SET metadata = graphgate_json_merge(metadata, ?),"
            " updated_at = max(updated_at, ?) WHERE owner = ? AND thread_id = ?"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (patch, self._clock(), owner, thread_id),
        )
        return next((_sqlite_record(row) for row in rows), None)

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        _check_status(status)
        await self._conn.execute(
            "UPDATE graphgate_threads SET status = ?, updated_at = max(updated_at, ?)"
            " WHERE owner = ? AND thread_id = ?",
            (status, self._clock(), owner, thread_id),
        )

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
        _check_page(limit, offset)
        order_by = _order_by(sort_by, sort_order)
        where, params = _where(_SQLITE, owner, metadata, status, ids)
        rows = await self._conn.execute_fetchall(
            # Every piece is a constant of this module; all input is bound.
            f"SELECT {_COLUMNS} FROM graphgate_threads"  # noqa: S608
            + where + order_by + " LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_sqlite_record(row) for row in rows]

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        where, params = _where(_SQLITE, owner, metadata, status, None)
        rows = await self._conn.execute_fetchall(
            "SELECT count(*) FROM graphgate_threads" + where, params  # noqa: S608 (constants)
        )
        return int(next(iter(rows))[0])

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        return await self.search(owner, limit=limit, offset=offset)

    async def delete(self, owner: str, thread_id: str) -> bool:
        async with self._conn.execute(
            "DELETE FROM graphgate_threads WHERE owner = ? AND thread_id = ?",
            (owner, thread_id),
        ) as cursor:
            return cursor.rowcount == 1


# COLLATE "C": order thread ids (and statuses) by code point, as SQLite and the memory
# store do, whatever the database's default collation; it also makes the key comparisons
# plain byte compares.
#
# Run by `migrate_postgres`, one statement at a time, on every start: each is idempotent.
# The CREATE TABLE is today's shape; the ALTERs bring tables from before metadata, status
# and thread creation without a run up to it (and are no-ops on a table just created).
POSTGRES_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS graphgate_threads (
        owner TEXT COLLATE "C" NOT NULL,
        thread_id TEXT COLLATE "C" NOT NULL,
        graph TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
        status TEXT COLLATE "C" NOT NULL DEFAULT 'idle',
        PRIMARY KEY (owner, thread_id)
    )
    """,
    "ALTER TABLE graphgate_threads"
    " ADD COLUMN IF NOT EXISTS metadata JSONB NOT NULL DEFAULT '{}'::jsonb",
    "ALTER TABLE graphgate_threads"
    " ADD COLUMN IF NOT EXISTS status TEXT COLLATE \"C\" NOT NULL DEFAULT 'idle'",
    "ALTER TABLE graphgate_threads ALTER COLUMN graph DROP NOT NULL",
    "CREATE INDEX IF NOT EXISTS graphgate_threads_owner_updated"
    " ON graphgate_threads (owner, updated_at DESC, thread_id)",
    # Serves search() by metadata: jsonb_path_ops indexes exactly the @> operator.
    "CREATE INDEX IF NOT EXISTS graphgate_threads_metadata"
    " ON graphgate_threads USING gin (metadata jsonb_path_ops)",
)

_POSTGRES = _Dialect(
    owner="owner = %s",
    status="status = %s",
    metadata="metadata @> %s::jsonb",
    ids="thread_id = ANY(%s::text[])",
    ids_param=builtins.list,
)


def _postgres_record(row: dict[str, Any]) -> ThreadRecord:
    # TIMESTAMPTZ comes back in the session's time zone; normalise to UTC.
    return ThreadRecord(
        row["thread_id"],
        row["graph"],
        row["created_at"].astimezone(UTC),
        row["updated_at"].astimezone(UTC),
        row["metadata"],
        row["status"],
    )


class PostgresThreads:
    """The registry in Postgres, timed by the database clock so replicas agree.

    The table is created by `migrate_postgres`, with the other migrations. Metadata goes
    in as the JSON text from dump_metadata, cast to jsonb by the statement.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, params: Any) -> builtins.list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

    async def touch(
        self, owner: str, thread_id: str, graph: str, *, status: str | None = None
    ) -> None:
        _check_graph(graph)
        if status is not None:
            _check_status(status)
        async with self._pool.connection() as conn:
            # now() is the transaction's start; GREATEST keeps updated_at from moving back
            # when two touches of one thread commit out of order.
            await conn.execute(
                "INSERT INTO graphgate_threads"
                " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
                " VALUES (%s, %s, %s, now(), now(), '{}'::jsonb, coalesce(%s::text, 'idle'))"
                " ON CONFLICT (owner, thread_id) DO UPDATE SET graph = EXCLUDED.graph,"
                " updated_at = GREATEST(graphgate_threads.updated_at, EXCLUDED.updated_at),"
                " status = coalesce(%s::text, graphgate_threads.status)",
                (owner, thread_id, graph, status, status),
            )

    async def create(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord | None:
        rows = await self._fetch(
            "INSERT INTO graphgate_threads"
            " (owner, thread_id, graph, created_at, updated_at, metadata, status)"
            " VALUES (%s, %s, NULL, now(), now(), %s::jsonb, 'idle')"
            " ON CONFLICT (owner, thread_id) DO NOTHING"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (owner, thread_id, dump_metadata(metadata)),
        )
        return next((_postgres_record(row) for row in rows), None)

    async def get(self, owner: str, thread_id: str) -> ThreadRecord | None:
        rows = await self._fetch(
            "SELECT thread_id, graph, created_at, updated_at, metadata, status"
            " FROM graphgate_threads WHERE owner = %s AND thread_id = %s",
            (owner, thread_id),
        )
        return next((_postgres_record(row) for row in rows), None)

    async def update(
        self, owner: str, thread_id: str, *, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord | None:
        # jsonb ||: a shallow merge in which the right side's keys win, nulls included.
        rows = await self._fetch(
            "UPDATE graphgate_threads SET metadata = metadata || %s::jsonb,"
            " updated_at = GREATEST(updated_at, now()) WHERE owner = %s AND thread_id = %s"
            " RETURNING thread_id, graph, created_at, updated_at, metadata, status",
            (dump_metadata({} if metadata is None else metadata), owner, thread_id),
        )
        return next((_postgres_record(row) for row in rows), None)

    async def set_status(self, owner: str, thread_id: str, status: str) -> None:
        _check_status(status)
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE graphgate_threads SET status = %s, updated_at = GREATEST(updated_at, now())"
                " WHERE owner = %s AND thread_id = %s",
                (status, owner, thread_id),
            )

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
        _check_page(limit, offset)
        order_by = _order_by(sort_by, sort_order)
        where, params = _where(_POSTGRES, owner, metadata, status, ids)
        rows = await self._fetch(
            # Every piece is a constant of this module; all input is bound.
            f"SELECT {_COLUMNS} FROM graphgate_threads"  # noqa: S608
            + where + order_by + " LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [_postgres_record(row) for row in rows]

    async def count(
        self, owner: str, *, metadata: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        where, params = _where(_POSTGRES, owner, metadata, status, None)
        rows = await self._fetch(
            "SELECT count(*) AS n FROM graphgate_threads" + where, params  # noqa: S608
        )
        return int(rows[0]["n"])

    async def list(self, owner: str, *, limit: int, offset: int = 0) -> builtins.list[ThreadRecord]:
        return await self.search(owner, limit=limit, offset=offset)

    async def delete(self, owner: str, thread_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM graphgate_threads WHERE owner = %s AND thread_id = %s",
                (owner, thread_id),
            )
            return cursor.rowcount == 1
