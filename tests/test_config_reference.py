"""docs/configuration.md's generated reference matches the Settings model."""

from __future__ import annotations

from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel, BeforeValidator

from service import config_reference
from service.config_reference import (
    BEGIN_MARKER,
    END_MARKER,
    default_docs_path,
    env_var,
    extract_reference,
    iter_sections,
    main,
    render_reference,
)
from service.settings import Settings
from service.settings.types import split_commas

REGENERATE = "run `python -m service.config_reference --write` and commit docs/configuration.md"


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _sections(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, type[BaseModel]]:
    """Every section by dotted name (`auth.jwt` too), each before its subsections."""
    sections: dict[str, type[BaseModel]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if _is_model(annotation):
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
            sections[prefix + name] = annotation
            sections.update(_sections(annotation, f"{prefix}{name}."))
    return sections


def test_committed_reference_is_current() -> None:
    document = default_docs_path().read_text(encoding="utf-8")
    assert BEGIN_MARKER in document, f"{BEGIN_MARKER} is missing from docs/configuration.md"
    assert END_MARKER in document, f"{END_MARKER} is missing from docs/configuration.md"
    assert extract_reference(document) == render_reference(), (
        f"docs/configuration.md is out of date with service/settings/: {REGENERATE}"
    )


def test_every_setting_is_documented() -> None:
    reference = render_reference()
    sections = _sections()
    for name, field in Settings.model_fields.items():
        if not _is_model(field.annotation):
            assert f"| `{name}` | `{env_var(name)}` |" in reference, (
                f"setting {name} is not in the reference"
            )
    for section, model in sections.items():
        assert f"### `[{section}]`" in reference, f"section [{section}] is not in the reference"
        for key, field in model.model_fields.items():
            if _is_model(field.annotation):
                # A subsection gets its own table, not a row in its parent's.
                assert f"| `{key}` |" not in _section_text(reference, section)
                continue
            assert f"| `{key}` | `{env_var(key, section)}` |" in reference, (
                f"setting {section}.{key} is not in the reference"
            )


def _section_text(reference: str, section: str) -> str:
    """The reference from a section's heading to the next heading."""
    start = reference.index(f"### `[{section}]`")
    end = reference.find("\n### ", start + 1)
    return reference[start : end if end != -1 else len(reference)]


def test_nested_sections_get_their_own_table() -> None:
    reference = render_reference()
    jwt = _section_text(reference, "auth.jwt")
    assert "| `secret` | `GRAPHGATE_AUTH__JWT__SECRET` | string, **secret** | unset |" in jwt
    assert "| `jwt` |" not in _section_text(reference, "auth")
    assert "`[auth.jwt]`" in _section_text(reference, "auth")  # the parent points to it
    assert list(iter_sections(Settings)) == list(_sections().items())


def test_list_types_are_readable() -> None:
    reference = render_reference()
    proxies = _section_text(reference, "server")
    assert (
        "| `trusted_proxies` | `GRAPHGATE_SERVER__TRUSTED_PROXIES` | list of string | "
        '`["127.0.0.1", "::1"]` |'
    ) in proxies
    algorithms = next(
        line for line in reference.splitlines() if "`GRAPHGATE_AUTH__JWT__ALGORITHMS`" in line
    )
    assert '| list of `"HS256"`, `"HS384"`, ' in algorithms
    assert '| `["RS256"]` |' in algorithms
    assert "Literal" not in reference and "typing" not in reference


def test_every_list_setting_takes_comma_separated_text() -> None:
    """The reference says env vars and secrets files give lists comma-separated; keep it true."""
    assert "comma-separated text" in render_reference()
    for section, model in _sections().items():
        for key, field in model.model_fields.items():
            if get_origin(field.annotation) is not list:
                continue
            funcs = [m.func for m in field.metadata if isinstance(m, BeforeValidator)]
            assert split_commas in funcs, f"{section}.{key} is a list without split_commas"
            assert get_args(field.annotation), f"{section}.{key} is an untyped list"


def test_sections_come_in_order_after_top_level_settings() -> None:
    reference = render_reference()
    headings = ["### Top-level settings", *(f"### `[{name}]`" for name in _sections())]
    positions = [reference.index(heading) for heading in headings]
    assert positions == sorted(positions)
    # Field order of Settings; a subsection follows its parent section.
    assert list(_sections()) == [
        "server", "postgres", "streaming", "runs", "limits", "demo", "logging",
        "auth", "auth.jwt", "rate_limit", "cors", "http", "metrics", "telemetry",
    ]


def test_secrets_are_marked() -> None:
    reference = render_reference()
    for env_name in (
        "GRAPHGATE_DATABASE_URL", "GRAPHGATE_AUTH__JWT__SECRET",
        "GRAPHGATE_RATE_LIMIT__STORAGE_URI", "GRAPHGATE_METRICS__TOKEN",
    ):
        row = next(line for line in reference.splitlines() if f"`{env_name}`" in line)
        assert "**secret**" in row, env_name


def test_env_var_names() -> None:
    assert env_var("database_url") == "GRAPHGATE_DATABASE_URL"
    assert env_var("pool_max_size", "postgres") == "GRAPHGATE_POSTGRES__POOL_MAX_SIZE"
    assert env_var("secret", "auth.jwt") == "GRAPHGATE_AUTH__JWT__SECRET"


def test_main_rewrites_only_between_markers(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(f"# Intro\n\n{BEGIN_MARKER}\nstale\n{END_MARKER}\n\nOutro\n", encoding="utf-8")
    assert main([str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(f"# Intro\n\n{BEGIN_MARKER}")
    assert text.endswith(f"{END_MARKER}\n\nOutro\n")
    assert extract_reference(text) == render_reference()


def test_main_creates_a_new_file(tmp_path: Path) -> None:
    doc = tmp_path / "new.md"
    assert main([str(doc)]) == 0
    assert extract_reference(doc.read_text(encoding="utf-8")) == render_reference()


def test_main_refuses_a_file_without_markers(tmp_path: Path) -> None:
    doc = tmp_path / "notes.md"
    doc.write_text("hand-written\n", encoding="utf-8")
    assert main([str(doc)]) == 1
    assert doc.read_text(encoding="utf-8") == "hand-written\n"


def test_write_flag_targets_the_docs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(f"{BEGIN_MARKER}{END_MARKER}\n", encoding="utf-8")
    monkeypatch.setattr(config_reference, "default_docs_path", lambda: doc)
    assert main(["--write"]) == 0
    assert extract_reference(doc.read_text(encoding="utf-8")) == render_reference()


def test_main_prints_without_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == render_reference().strip("\n") + "\n"
