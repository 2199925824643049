"""Layers import one way (docs/DESIGN.md §3): checked on the source, import statement by import statement.

core (errors, presets, schedules, upsample) <- reference/ (only core) and <- sampling/ (core, ops, never the
reference) <- fast/ (knows no concrete network: nothing from models/). Function-level imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mimicfast

PACKAGE = Path(mimicfast.__file__).parent
CORE = ("mimicfast.errors", "mimicfast.presets", "mimicfast.schedules", "mimicfast.upsample")
ALLOWED = {
    "schedules.py": ("mimicfast.errors",),
    "reference": (*CORE, "mimicfast.reference"),
    "sampling": (*CORE, "mimicfast.ops", "mimicfast.sampling"),
    "fast": (*CORE, "mimicfast.ops", "mimicfast.sampling", "mimicfast.fast"),
}


def _mimicfast_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "mimicfast" or n.startswith("mimicfast.")}


@pytest.mark.parametrize("layer", list(ALLOWED))
def test_layer_imports_only_below_itself(layer: str) -> None:
    files = [PACKAGE / layer] if layer.endswith(".py") else sorted((PACKAGE / layer).rglob("*.py"))
    assert files and all(f.exists() for f in files)
    bad = {
        f"{f.relative_to(PACKAGE)}: {name}"
        for f in files
        for name in _mimicfast_imports(f)
        if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED[layer])
    }
    assert not bad, f"upward or sideways imports: {sorted(bad)}"
