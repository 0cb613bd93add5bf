"""The package ships whole: setuptools' package discovery skips folders without
__init__.py, so a wheel (the container image) would silently lack them."""

from __future__ import annotations

from pathlib import Path

import service

PACKAGE = Path(service.__file__).parent


def test_every_module_folder_is_a_regular_package() -> None:
    """Each folder of Python modules under service/ has an __init__.py."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(
        str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").exists()
    )
    assert missing == []


def test_package_is_typed() -> None:
    """py.typed is present so users' type checkers read our hints."""
    assert (PACKAGE / "py.typed").exists()
