"""Layout rules: services share only `shared/` and the wire. No service imports another service
or the `lepton` CLI package, and `shared/` imports no service and not `lepton`. Every process
tests and benches spawn dies with them."""

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


KEY_HOLDING = ("shared.tokens", "shared.pseudonym", "services.ingest")
IMPORT_ALL = """
import importlib, json, pkgutil, sys
for name in ("serving", "trainer"):
    package = importlib.import_module(f"services.{name}")
    for module in pkgutil.walk_packages(package.__path__, f"services.{name}."):
        if ".gen" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_serving_and_the_trainer_never_load_the_keyring_or_the_platform_key() -> None:
    """Their dead letters are sealed to the DLQ public key: no module they load, and no import
    inside their functions, can unwrap a data key or derive a pseudonym."""
    import json
    import subprocess
    import sys

    from shared.lifecycle import parent_death

    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False, preexec_fn=parent_death())
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert not [m for m in loaded if m.startswith(KEY_HOLDING)]
    imported = {name for service in ("serving", "trainer")
                for path in (ROOT / "services" / service).rglob("*.py")
                for name in _imports(path)}
    assert not [m for m in imported if m.startswith(KEY_HOLDING)]


SPAWNS = {"Popen", "run", "call", "check_call", "check_output"}


def test_every_process_tests_and_benches_spawn_dies_with_them() -> None:
    """A killed pytest or bench run (CI cancelling a job) orphans nothing: every subprocess
    call in tests/ and bench/ passes `preexec_fn=parent_death()` (shared/lifecycle.py)."""
    missing = []
    for folder in ("tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "subprocess" and node.func.attr in SPAWNS):
                    hook = next((k.value for k in node.keywords if k.arg == "preexec_fn"), None)
                    if not (isinstance(hook, ast.Call) and isinstance(hook.func, ast.Name)
                            and hook.func.id == "parent_death"):
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not missing, "spawned without preexec_fn=parent_death(): " + ", ".join(missing)
