"""JSON for anything a graph may put in its state or stream, without ever raising.

Fast path: orjson, with a `default` for LangChain messages, pydantic models and the
other types graphs commonly hold. If orjson still refuses (ints beyond 64 bits, cycles,
non-string keys it can't coerce), we fall back to the standard library and finally to a
type-name placeholder, so a stream never dies on an odd value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):  # LangChain messages are pydantic models
        return obj.model_dump()
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Mapping):
        return dict(obj)
    to_json = getattr(obj, "to_json", None)  # LangChain Serializable objects
    if callable(to_json):
        try:
            return to_json()
        except Exception:
            return _placeholder(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    slots = getattr(type(obj), "__slots__", None)
    if slots:
        return {name: getattr(obj, name, None) for name in slots if not name.startswith("_")}
    return _placeholder(obj)


def _placeholder(obj: Any) -> dict[str, str]:
    # Only the type name: str()/repr() of an arbitrary object may carry secrets.
    return {"__unserializable__": type(obj).__name__}


def _stdlib_default(obj: Any) -> Any:
    try:
        converted = _default(obj)
    except Exception:
        return _placeholder(obj)
    if converted is obj:  # pragma: no cover - defensive, _default always converts
        return _placeholder(obj)
    return converted


def dumps(value: Any) -> bytes:
    """One-line JSON bytes for `value`; never raises."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError, ValueError, RecursionError):
        pass
    try:
        return json.dumps(
            value, default=_stdlib_default, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (TypeError, ValueError, RecursionError):
        return orjson.dumps(_placeholder(value))


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON types (for responses that FastAPI serialises itself)."""
    return orjson.loads(dumps(value))
