"""Rules about the code itself, checked on its syntax tree so they cannot rot.

- Every `jwt.decode(...)` names its `algorithms=` (without it python-jose takes the
  algorithm from the token header) and never turns signature checks off.
- No `BaseHTTPMiddleware` and no `@app.middleware("http")`: they buffer or break event
  streams; middleware is pure ASGI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SERVICE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_the_rules_see_the_code() -> None:
    names = {_call_name(n) for _, tree in _modules() for n in ast.walk(tree)
             if isinstance(n, ast.Call)}
    assert "jwt.decode" in names  # the JWT verifier is found, so the next test means something


def test_jwt_decode_always_names_its_algorithms() -> None:
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node).endswith("jwt.decode"):
                keywords = {k.arg: k.value for k in node.keywords}
                where = f"{path}:{node.lineno}"
                assert "algorithms" in keywords, f"{where}: jwt.decode without algorithms="
                assert not isinstance(keywords["algorithms"], ast.Constant), (
                    f"{path}:{node.lineno}: algorithms must be a list, never None")
                options = keywords.get("options")
                if isinstance(options, ast.Dict):
                    for key, value in zip(options.keys, options.values, strict=True):
                        if isinstance(key, ast.Constant) and key.value == "verify_signature":
                            assert not (isinstance(value, ast.Constant) and value.value is False)


def test_no_buffering_middleware() -> None:
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                assert name != "BaseHTTPMiddleware", f"{path}:{node.lineno}"
            if isinstance(node, ast.Call) and _call_name(node).endswith(".middleware"):
                raise AssertionError(f"{path}:{node.lineno}: @app.middleware is not pure ASGI")
