"""`dumps`: one-line JSON bytes for anything a graph may stream, never raising."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessageChunk, HumanMessage
from pydantic import BaseModel, SecretStr

from service.streaming.serialize import dumps

SECRET = "password=hunter2"


def loads_one_line(data: bytes) -> Any:
    """Parse `dumps` output, checking it is bytes holding exactly one line."""
    assert isinstance(data, bytes)
    assert b"\n" not in data
    assert b"\r" not in data
    return json.loads(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(data: bytes) -> Any:
    """Parse as strict JSON (no NaN/Infinity), as a browser's JSON.parse would."""
    assert b"\n" not in data
    return json.loads(data, parse_constant=_reject_constant)


class Reply(BaseModel):
    text: str
    score: float


class Credentials(BaseModel):
    user: str
    token: SecretStr


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Slotted:
    __slots__ = ("_hidden", "name", "size")

    def __init__(self) -> None:
        self.name = "slotted"
        self.size = 3
        self._hidden = SECRET


class SlottedChild(Slotted):
    __slots__ = ("extra",)

    def __init__(self) -> None:
        super().__init__()
        self.extra = "child"


class SingleSlot:
    __slots__ = "name"

    def __init__(self) -> None:
        self.name = "only"


class Opaque:
    """No state to serialise; its str/repr are exactly what must never be printed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return SECRET

    def __str__(self) -> str:
        return SECRET


class OpaqueWithDict:
    def __init__(self) -> None:
        self._token = SECRET

    def __repr__(self) -> str:
        return SECRET

    def __str__(self) -> str:
        return SECRET


# --- LangChain and pydantic ---------------------------------------------------------------


def test_human_message() -> None:
    """A HumanMessage serialises to its fields, type included."""
    data = loads_one_line(dumps(HumanMessage("hi\nthere", id="m-1")))
    assert data["type"] == "human"
    assert data["content"] == "hi\nthere"
    assert data["id"] == "m-1"


def test_ai_message_chunk_with_tool_call_chunks() -> None:
    """An AIMessageChunk keeps its partial tool-call arguments as a string."""
    chunk = AIMessageChunk(
        content="",
        tool_call_chunks=[{"name": "count_words", "args": '{"text": "a', "id": "c1", "index": 0}],
    )
    data = loads_one_line(dumps(chunk))
    assert data["type"] == "AIMessageChunk"
    assert data["tool_call_chunks"][0]["name"] == "count_words"
    assert data["tool_call_chunks"][0]["args"] == '{"text": "a'
    assert data["tool_call_chunks"][0]["id"] == "c1"


def test_pydantic_model() -> None:
    """A pydantic model serialises to its model_dump."""
    assert loads_one_line(dumps({"reply": Reply(text="ok", score=0.5)})) == {
        "reply": {"text": "ok", "score": 0.5}
    }


def test_pydantic_secret_field_is_not_revealed() -> None:
    """A SecretStr inside a pydantic model is never written out."""
    out = dumps(Credentials(user="u", token=SecretStr(SECRET)))
    assert b"hunter2" not in out
    assert loads_one_line(out)["user"] == "u"


# --- other Python values ---------------------------------------------------------------------


def test_dataclass() -> None:
    """A dataclass serialises to an object of its fields."""
    assert loads_one_line(dumps([Point(1, 2)])) == [{"x": 1, "y": 2}]


def test_sets_become_lists() -> None:
    """Sets and frozensets become JSON arrays."""
    data = loads_one_line(dumps({"s": {3, 1, 2}, "f": frozenset({"a"})}))
    assert sorted(data["s"]) == [1, 2, 3]
    assert data["f"] == ["a"]


@pytest.mark.parametrize(
    "value", [b"\x00\xff\n", bytearray(b"\x00\xff\n"), memoryview(b"\x00\xff\n")]
)
def test_bytes_become_base64(value: Any) -> None:
    """bytes, bytearray and memoryview become base64 strings."""
    data = loads_one_line(dumps({"b": value}))
    assert base64.b64decode(data["b"]) == b"\x00\xff\n"


def test_datetimes_and_uuids() -> None:
    """datetimes and UUIDs become ISO-8601 and canonical UUID strings."""
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = loads_one_line(dumps({"when": when, "day": when.date(), "id": ident}))
    assert datetime.datetime.fromisoformat(data["when"]) == when
    assert data["day"] == "2024-05-06"
    assert data["id"] == str(ident)


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**40])
def test_ints_beyond_64_bits(big: int) -> None:
    """Integers outside orjson's 64-bit range are written exactly."""
    assert loads_one_line(dumps({"n": big, "other": [1, "x"]})) == {"n": big, "other": [1, "x"]}


def test_non_string_dict_keys() -> None:
    """int, float, bool, None, UUID and datetime keys become strings."""
    ident = uuid.UUID(int=1)
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    data = loads_one_line(dumps({1: "a", 2.5: "b", False: "c", None: "d", ident: "e", when: "f"}))
    assert data == {
        "1": "a",
        "2.5": "b",
        "false": "c",
        "null": "d",
        str(ident): "e",
        when.isoformat(): "f",
    }


def test_non_string_keys_with_big_ints() -> None:
    """Non-string keys survive the fallback path taken for huge integers."""
    assert loads_one_line(dumps({1: 2**70})) == {"1": 2**70}


def test_self_referencing_list_does_not_raise() -> None:
    """A cycle yields a placeholder instead of an exception or infinite output."""
    cyclic: list[Any] = [1, "two"]
    cyclic.append(cyclic)
    data = loads_one_line(dumps(cyclic))
    assert data is not None


def test_self_referencing_dict_does_not_raise() -> None:
    """A dict containing itself yields valid JSON too."""
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    loads_one_line(dumps({"outer": cyclic}))


def test_slots_object_public_fields() -> None:
    """An object with __slots__ serialises its public slots only."""
    out = dumps(Slotted())
    assert loads_one_line(out) == {"name": "slotted", "size": 3}
    assert b"hunter2" not in out


def test_slots_inherited_from_a_base_class() -> None:
    """Slots declared on base classes are serialised along with the subclass's own."""
    assert loads_one_line(dumps(SlottedChild())) == {"name": "slotted", "size": 3, "extra": "child"}


def test_slots_given_as_a_single_string() -> None:
    """`__slots__ = "name"` (a plain string) means one slot called name."""
    assert loads_one_line(dumps(SingleSlot())) == {"name": "only"}


@pytest.mark.parametrize("factory", [Opaque, OpaqueWithDict])
def test_opaque_object_never_uses_repr_or_str(factory: type[Any]) -> None:
    """An arbitrary object is written without its repr/str or private attributes."""
    out = dumps({"value": factory(), "n": 1})
    assert b"hunter2" not in out
    assert b"password" not in out
    data = loads_one_line(out)
    assert data["n"] == 1


def test_opaque_object_on_the_fallback_path_never_uses_repr_or_str() -> None:
    """The stdlib fallback (taken for huge ints) also never prints repr/str."""
    out = dumps([2**70, Opaque(), OpaqueWithDict()])
    assert b"hunter2" not in out
    assert loads_one_line(out)[0] == 2**70


def test_object_whose_to_json_raises_gets_a_placeholder() -> None:
    """A to_json() that raises gives a type-name placeholder rather than an error."""

    class Broken:
        __slots__ = ()

        def to_json(self) -> Any:
            raise RuntimeError(SECRET)

    out = dumps({"x": Broken()})
    assert b"hunter2" not in out
    assert loads_one_line(out) == {"x": {"__unserializable__": "Broken"}}


def test_newlines_in_strings_are_escaped() -> None:
    """Line breaks inside strings never break the output onto several lines."""
    text = "a\nb\r\nc\u2028d"
    assert loads_one_line(dumps({"t": text})) == {"t": text}
    assert loads_one_line(dumps([2**70, text])) == [2**70, text]


def test_non_finite_floats_on_the_fast_path_are_null() -> None:
    """NaN and infinities become null on the orjson path."""
    assert loads_strict(dumps([float("nan"), float("inf")])) == [None, None]


def test_non_finite_floats_on_the_fallback_path_are_strict_json() -> None:
    """NaN next to a huge int still yields strict JSON."""
    loads_strict(dumps([2**70, float("nan"), float("-inf")]))


def test_datetime_survives_the_fallback_path() -> None:
    """A datetime next to a huge int is still written as its ISO string."""
    day = datetime.date(2024, 1, 2)
    assert loads_one_line(dumps([2**70, day])) == [2**70, "2024-01-02"]


# --- property -------------------------------------------------------------------------------

_hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=16)
)
_leaves = (
    _hashable_leaves
    | st.sets(_hashable_leaves, max_size=4)
    | st.frozensets(st.integers(), max_size=4)
)
_keys = st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
_values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(_keys, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, database=None)
@given(_values)
def test_dumps_always_returns_one_line_json(value: Any) -> None:
    """For any nested JSON-ish value with sets and bytes mixed in, dumps gives one JSON line."""
    out = dumps(value)
    assert isinstance(out, bytes)
    assert b"\n" not in out
    json.loads(out)


def test_exceptions_are_reduced_to_their_type() -> None:
    """An exception's attributes (a JSON document, a provider's body) never go out."""
    try:
        json.loads("not json; api_key=sk-SECRET-123")
    except json.JSONDecodeError as exc:
        error = exc
    out = dumps({"error": error, "nested": [ValueError("password=hunter2")]})
    assert b"SECRET" not in out and b"hunter2" not in out
    assert json.loads(out) == {"error": {"__exception__": "JSONDecodeError"},
                               "nested": [{"__exception__": "ValueError"}]}
