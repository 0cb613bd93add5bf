"""JSON for anything a graph may put in its state or stream, without ever raising.

Fast path: orjson, with a `default` for LangChain messages, pydantic models and the
other types graphs commonly hold. If orjson still refuses (ints beyond 64 bits, cycles,
non-string keys it can't coerce), we fall back to the standard library and finally to a
type-name placeholder, so a stream never dies on an odd value.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    # Exceptions reach streams inside LangGraph payloads (debug `task_result` errors).
    # Their attributes hold the failure's text (json.JSONDecodeError keeps the whole
    # document; provider errors keep response bodies), so only the type goes out.
    if isinstance(obj, BaseException):
        return {"__exception__": type(obj).__name__}
    if isinstance(obj, BaseModel):  # LangChain messages are pydantic models
        return obj.model_dump()
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Mapping):
        return dict(obj)
    # orjson handles these natively; the stdlib fallback path needs them spelled out.
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    to_json = getattr(obj, "to_json", None)  # LangChain Serializable objects
    if callable(to_json):
        try:
            return to_json()
        except Exception:
            return _placeholder(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    slots = _slot_names(type(obj))
    if slots:
        return {name: getattr(obj, name, None) for name in slots if not name.startswith("_")}
    return _placeholder(obj)


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        declared = klass.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            if name not in names and name not in ("__dict__", "__weakref__"):
                names.append(name)
    return names


def _finite(value: Any) -> Any:
    """NaN and infinities as null, as orjson writes them (stdlib would write bare NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


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
            _finite(value), default=_stdlib_default, separators=(",", ":"),
            ensure_ascii=False, allow_nan=False,
        ).encode()
    except (TypeError, ValueError, RecursionError):
        return orjson.dumps(_placeholder(value))

