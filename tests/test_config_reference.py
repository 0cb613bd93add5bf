"""docs/configuration.md's generated reference matches the Settings model."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from service import config_reference
from service.config_reference import (
    BEGIN_MARKER,
    END_MARKER,
    default_docs_path,
    env_var,
    extract_reference,
    main,
    render_reference,
)
from service.settings import Settings

REGENERATE = "run `python -m service.config_reference --write` and commit docs/configuration.md"


def _sections() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = annotation
    return sections


def test_committed_reference_is_current() -> None:
    document = default_docs_path().read_text(encoding="utf-8")
    assert BEGIN_MARKER in document, f"{BEGIN_MARKER} is missing from docs/configuration.md"
    assert END_MARKER in document, f"{END_MARKER} is missing from docs/configuration.md"
    assert extract_reference(document) == render_reference(), (
        f"docs/configuration.md is out of date with service/settings.py: {REGENERATE}"
    )


def test_every_setting_is_documented() -> None:
    reference = render_reference()
    sections = _sections()
    for name in Settings.model_fields:
        if name in sections:
            assert f"### `[{name}]`" in reference, f"section [{name}] is not in the reference"
            for key in sections[name].model_fields:
                assert f"| `{key}` | `{env_var(key, name)}` |" in reference, (
                    f"setting {name}.{key} is not in the reference"
                )
        else:
            assert f"| `{name}` | `{env_var(name)}` |" in reference, (
                f"setting {name} is not in the reference"
            )


def test_sections_come_in_order_after_top_level_settings() -> None:
    reference = render_reference()
    headings = ["### Top-level settings", *(f"### `[{name}]`" for name in _sections())]
    positions = [reference.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert list(_sections()) == [
        "server", "postgres", "streaming", "runs", "limits", "demo", "logging"
    ]


def test_secrets_are_marked() -> None:
    reference = render_reference()
    row = next(line for line in reference.splitlines() if "`GRAPHGATE_DATABASE_URL`" in line)
    assert "**secret**" in row


def test_env_var_names() -> None:
    assert env_var("database_url") == "GRAPHGATE_DATABASE_URL"
    assert env_var("pool_max_size", "postgres") == "GRAPHGATE_POSTGRES__POOL_MAX_SIZE"


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
