"""docs/deploy-vm.md: every command block says whether it is tested, the tests it names
exist, and its single-VM graphgate.toml passes `check-config --strict`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy-vm.md"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "graphgate.env.example"
MARKERS = ("Tested:", "Not testable here:")
# tests/<path>.py, optionally followed by ::test_name
REFERENCE = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")
FENCE = re.compile(r"^```(\w*)\s*$")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, first non-blank paragraph after the block) for each fenced block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        after = end + 1
        while after < len(lines) and not lines[after].strip():
            after += 1
        paragraph = []
        while after < len(lines) and lines[after].strip():
            paragraph.append(lines[after])
            after += 1
        blocks.append((opening.group(1), "\n".join(lines[i + 1:end]), " ".join(paragraph)))
        i = end + 1
    return blocks


def test_every_block_is_followed_by_a_marker() -> None:
    blocks = _blocks(_doc())
    assert len(blocks) > 10
    unmarked = [body.splitlines()[0] for _, body, after in blocks if not after.startswith(MARKERS)]
    assert not unmarked, f"blocks without a Tested:/Not testable here: marker: {unmarked}"


def test_referenced_tests_exist() -> None:
    references = REFERENCE.findall(_doc())
    assert references
    missing = []
    for path, name in references:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and not re.search(rf"^\s*(async\s+)?def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"named in docs/deploy-vm.md but not found: {sorted(set(missing))}"


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_vm_config_passes_check_config_strict(tmp_path: Path) -> None:
    """The documented TOML, the shipped env file, a key from `keys create --expires-at` cut
    out as the doc's `sed` does, and the documented database_url credential."""
    text = _doc()
    (toml,) = [body for lang, body, _ in _blocks(text) if lang == "toml"]
    config = tmp_path / "graphgate.toml"
    config.write_text(toml)
    url = re.search(r"printf '%s' '(postgresql://[^']+)' > /etc/credstore/database_url", text)
    assert url is not None
    secrets = tmp_path / "credstore"
    secrets.mkdir()
    (secrets / "database_url").write_text(url.group(1))

    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("GRAPHGATE_") and k != "CREDENTIALS_DIRECTORY"}
    created = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "acme",
         "--name", "web-frontend", "--expires-at", "2099-01-01T00:00:00Z"],
        env=clean, capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    lines = created.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# created"))
    keys = tmp_path / "keys.toml"
    keys.write_text("\n".join(lines[start:]) + "\n")

    env = {**clean, **_env_file(ENV_EXAMPLE), "GRAPHGATE_CONFIG": str(config),
           "GRAPHGATE_AUTH__API_KEYS_FILE": str(keys), "GRAPHGATE_SECRETS_DIR": str(secrets)}
    result = subprocess.run([sys.executable, "-m", "service", "check-config", "--strict"],
                            env=env, capture_output=True, text=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 critical, 0 warning" in result.stdout, result.stdout
    assert "kind: postgres" in result.stdout and "kind: redis" in result.stdout


@pytest.mark.parametrize("literal", ["server 127.0.0.1:8000;", "keepalive_timeout 60s;"])
def test_doc_matches_the_shipped_nginx_upstream(literal: str) -> None:
    assert literal in (ROOT / "deploy" / "nginx" / "graphgate.conf").read_text()
