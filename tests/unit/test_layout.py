"""Layout rules: services share only `shared/` and the wire. No service imports another service
or the `lepton` CLI package, and `shared/` imports no service and not `lepton`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir()
                  if (p / "__init__.py").exists())


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> tuple[str, ...]:
    parts = name.split(".")
    return tuple(parts[:2]) if parts[0] == "services" else (parts[0],)


@pytest.mark.parametrize("package", ["shared", *(f"services/{s}" for s in SERVICES)])
def test_packages_import_only_shared_and_themselves(package: str) -> None:
    allowed_service = ("services", package.split("/")[1]) if "/" in package else None
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = _top(name)
            if top == ("lepton",) or (top[0] == "services" and top != allowed_service):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)
