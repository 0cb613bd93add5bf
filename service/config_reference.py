"""Generate the configuration reference in docs/configuration.md from `Settings`.

The reference is derived from the pydantic models, so it cannot drift from the code:
a test compares the committed text with `render_reference()`. Regenerate it with

    python -m service.config_reference --write

Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from service.settings import ENV_PREFIX, Settings

BEGIN_MARKER = "<!-- BEGIN GENERATED REFERENCE -->"
END_MARKER = "<!-- END GENERATED REFERENCE -->"

_SCALAR_NAMES: dict[type[Any], str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
}


def default_docs_path() -> Path:
    """docs/configuration.md in the source tree this module belongs to."""
    return Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _is_section(field: FieldInfo) -> bool:
    annotation = field.annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_model(field: FieldInfo) -> type[BaseModel]:
    annotation = field.annotation
    assert isinstance(annotation, type)
    assert issubclass(annotation, BaseModel)
    return annotation


def _literal_values(annotation: Any) -> str:
    return ", ".join(f"`{json.dumps(value)}`" for value in get_args(annotation))


def _type_name(annotation: Any) -> str:
    """A reader's name for a field type; `None` in a union shows up as the default instead."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        parts = [_type_name(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(parts)
    if origin is Literal:
        return "one of " + _literal_values(annotation)
    if origin in (list, tuple, set, frozenset):
        (item, *_) = get_args(annotation) or (Any,)
        if get_origin(item) is Literal:
            return "list of " + _literal_values(item)
        return f"list of {_type_name(item)}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"table ({_type_name(key)} → {_type_name(value)})"
    if annotation is SecretStr:
        return "string, **secret**"
    if isinstance(annotation, type) and annotation in _SCALAR_NAMES:
        return _SCALAR_NAMES[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """The numeric limits pydantic enforces (`ge`, `gt`, `le`, `lt`), if any."""
    ge = gt = le = lt = None
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            ge = item.ge
        elif isinstance(item, annotated_types.Gt):
            gt = item.gt
        elif isinstance(item, annotated_types.Le):
            le = item.le
        elif isinstance(item, annotated_types.Lt):
            lt = item.lt
    if ge is not None and le is not None and gt is None and lt is None:
        return f"{ge} to {le}"
    parts = []
    for symbol, bound in (("≥", ge), (">", gt), ("≤", le), ("<", lt)):
        if bound is not None:
            parts.append(f"{symbol} {bound}")
    return ", ".join(parts)


def _type_cell(field: FieldInfo) -> str:
    name = _type_name(field.annotation)
    bounds = _bounds(field)
    return f"{name}, {bounds}" if bounds else name


def _toml_value(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        # A default is in the source code, so it is no secret (e.g. `memory://`).
        return _toml_value(value.get_secret_value())
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int | float):
        return f"`{value!r}`"
    if isinstance(value, str | Path):
        return f"`{json.dumps(str(value))}`"
    if isinstance(value, dict):
        if not value:
            return "`{}`"
        items = ", ".join(f"{key} = {json.dumps(str(val))}" for key, val in value.items())
        return f"`{{ {items} }}`"
    if isinstance(value, list | tuple):
        return f"`[{', '.join(json.dumps(str(item)) for item in value)}]`"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def env_var(name: str, section: str | None = None) -> str:
    """The environment variable that sets a field: `GRAPHGATE_KEY` or `GRAPHGATE_SECTION__KEY`.

    `section` may be dotted for a nested section: `env_var("secret", "auth.jwt")` is
    `GRAPHGATE_AUTH__JWT__SECRET`.
    """
    path = [*(section.split(".") if section else []), name]
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def iter_sections(
    model: type[BaseModel], prefix: str | None = None
) -> Iterator[tuple[str, type[BaseModel]]]:
    """Every `[section]` under `model`, as (dotted name, model), each before its subsections."""
    for name, field in model.model_fields.items():
        if _is_section(field):
            dotted = f"{prefix}.{name}" if prefix else name
            section = _section_model(field)
            yield dotted, section
            yield from iter_sections(section, dotted)


def _settings_fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """The fields of `model` that are settings, not subsections."""
    return [(name, field) for name, field in model.model_fields.items() if not _is_section(field)]


def _table(fields: Sequence[tuple[str, FieldInfo]], section: str | None) -> list[str]:
    lines = [
        "| TOML key | Environment variable | Type | Default | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in fields:
        row = [
            f"`{name}`",
            f"`{env_var(name, section)}`",
            _type_cell(field),
            _toml_value(field.get_default(call_default_factory=True)),
            field.description or "",
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    return lines


def render_reference() -> str:
    """The Markdown that sits between the markers in docs/configuration.md."""
    lines = [
        "## Reference",
        "",
        "Generated from `service/settings/` by `python -m service.config_reference --write`;"
        " do not edit by hand.",
        "Settings marked **secret** are shown as `**********` by `graphgate config`.",
        "Lists are TOML arrays in the file; an environment variable or a secrets file gives"
        " them as comma-separated text (`a,b`) or a JSON array.",
        "",
        "### Top-level settings",
        "",
        "Top-level TOML keys must come before the first `[section]` header.",
        "",
        *_table(_settings_fields(Settings), None),
    ]
    for section, model in iter_sections(Settings):
        lines += ["", f"### `[{section}]`", ""]
        doc = inspect.getdoc(model)
        if doc:
            lines += [" ".join(doc.split()), ""]
        subsections = [
            f"`[{section}.{name}]`" for name, field in model.model_fields.items()
            if _is_section(field)
        ]
        if subsections:
            lines += [f"Subsections: {', '.join(subsections)}, below.", ""]
        lines += _table(_settings_fields(model), section)
    return "\n\n" + "\n".join(lines) + "\n\n"


def replace_reference(document: str, reference: str) -> str:
    """`document` with the text between the markers replaced by `reference`."""
    head, begin, rest = document.partition(BEGIN_MARKER)
    _, end, tail = rest.partition(END_MARKER)
    if not begin or not end:
        raise ValueError(f"the markers {BEGIN_MARKER} and {END_MARKER} are missing")
    return head + BEGIN_MARKER + reference + END_MARKER + tail


def extract_reference(document: str) -> str:
    """The text between the markers of `document`."""
    _, begin, rest = document.partition(BEGIN_MARKER)
    inner, end, _ = rest.partition(END_MARKER)
    if not begin or not end:
        raise ValueError(f"the markers {BEGIN_MARKER} and {END_MARKER} are missing")
    return inner


def write_reference(path: Path) -> None:
    """Update the reference between the markers of `path`; a new file gets just the reference.

    An existing file without the markers is refused rather than overwritten, so the
    hand-written part of a document is never lost.
    """
    reference = render_reference()
    if path.exists():
        path.write_text(replace_reference(path.read_text(encoding="utf-8"), reference),
                        encoding="utf-8")
    else:
        path.write_text(BEGIN_MARKER + reference + END_MARKER + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.config_reference",
        description="Print the graphgate configuration reference, or write it between the "
        f"{BEGIN_MARKER} and {END_MARKER} markers of a Markdown file.",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "path", nargs="?", type=Path, help="file to update (created if it does not exist)"
    )
    target.add_argument(
        "--write", action="store_true", help=f"update {default_docs_path()} in place"
    )
    args = parser.parse_args(argv)
    path: Path | None = default_docs_path() if args.write else args.path
    if path is None:
        sys.stdout.write(render_reference().strip("\n") + "\n")
        return 0
    try:
        write_reference(path)
    except (OSError, ValueError) as exc:
        print(f"config_reference: error: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"config_reference: wrote the reference to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
