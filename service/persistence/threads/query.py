"""The SQL that the SQLite and Postgres registries build alike: columns, ORDER BY, WHERE."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.persistence.threads.json_filter import dump_metadata
from service.persistence.threads.model import SORT_COLUMNS, check_ids, check_sort, check_status

# What search() selects; the fixed statements spell the same list out.
COLUMNS = "thread_id, graph, created_at, updated_at, metadata, status"


def order_by_clause(sort_by: str, sort_order: str) -> str:
    """The ORDER BY clause, built only from the fixed names above, never from input."""
    check_sort(sort_by, sort_order)
    column = SORT_COLUMNS[SORT_COLUMNS.index(sort_by)]
    direction = "ASC" if sort_order == "asc" else "DESC"
    if column == "thread_id":
        return f" ORDER BY thread_id {direction}"
    return f" ORDER BY {column} {direction}, thread_id ASC"


@dataclass(frozen=True)
class Dialect:
    """How one SQL store spells each search filter; every value is a bound parameter."""

    owner: str
    status: str
    metadata: str
    ids: str
    ids_param: Callable[[builtins.list[str]], Any]


def where_clause(
    dialect: Dialect,
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
        check_status(status)
        clauses.append(dialect.status)
        params.append(status)
    if ids is not None:
        check_ids(ids)
        clauses.append(dialect.ids)
        params.append(dialect.ids_param(ids))
    return " WHERE " + " AND ".join(clauses), params
