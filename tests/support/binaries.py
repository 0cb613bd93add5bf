"""Locating the real server binaries the suite needs.

Locally a missing binary skips its tests; in CI (CI=true) it fails them, because a
skipped test there would hide that the suite did not run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    message = f"{what} is not installed (run `make test`, which installs it)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        missing(f"PostgreSQL ({name})")
    assert found is not None
    return found
