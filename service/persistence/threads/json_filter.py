"""Thread metadata as JSON: what every store accepts, and `jsonb @>` containment."""

from __future__ import annotations

import json
from typing import Any


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
