"""The package's layers import one way (docs/DESIGN.md §3), checked from the source with ``ast``.

core <- reference, kernels <- ops <- sampling <- fast <- models <- api <- apps (attacks, evaluate, CLI, demo, ...).
A module may import its own layer and the layers below it, never a layer above; ``default`` (the bundled
model's runtime) never imports the training code; the reference (the spec) is imported only by ``ops``, as its
portable backend, so nothing else shares code with what it checks. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Rank of each layer; a module may import modules of equal or lower rank.
LAYERS: dict[str, int] = {
    "core": 0,
    "reference": 1,
    "kernels": 1,
    "ext": 1,
    "ops": 2,
    "sampling": 3,
    "fast": 4,
    "models": 5,
    "api": 6,
    "app": 7,
}
CORE = {
    "errors", "presets", "schedules", "upsample_mode", "_lazy", "safe_read", "atomic", "seeding", "validate", "decode",
    "outputs", "autograd_memory",
}
API = {"api", "gradients"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside mimicfast (``mimicfast.kernels.x`` is the Triton layer)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    if head in CORE:
        return "core"
    if head in ("reference", "kernels", "ops", "sampling", "fast", "models"):
        return head
    if head == "_C":
        return "ext"
    if head in API:
        return "api"
    return "app"


def sources() -> list[tuple[str, Path]]:
    """(module name, path) of every Python file of the installed package (mimicfast/ and kernels/)."""
    out = []
    for path in sorted((ROOT / "mimicfast").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    for path in sorted((ROOT / "kernels").glob("*.py")):
        out.append((f"mimicfast.kernels.{path.stem}".removesuffix(".__init__"), path))
    return out


def imported_modules(module: str, path: Path) -> set[str]:
    """Every mimicfast module that ``path`` imports (absolute or relative, at any depth of the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            if base != "mimicfast":  # `from mimicfast import x` imports the submodule x, not the root
                names.append(base)
        else:
            continue
        found.update(name for name in names if name == "mimicfast" or name.startswith("mimicfast."))
    return found


def upward_edges() -> list[str]:
    bad = []
    for module, path in sources():
        src = layer_of(module)
        for target in imported_modules(module, path):
            if target == "mimicfast" or target.startswith("mimicfast.__"):
                if src != "app":
                    bad.append(f"{module} ({src}) imports the package root {target}")
                continue
            dst = layer_of(target)
            if LAYERS[dst] > LAYERS[src]:
                bad.append(f"{module} ({src}) imports {target} ({dst})")
            if dst == "reference" and src not in ("reference", "ops"):
                bad.append(f"{module} ({src}) imports the spec {target} (only ops may, as its portable backend)")
            if module.startswith("mimicfast.default") and target.startswith("mimicfast.train"):
                bad.append(f"{module} (bundled-model runtime) imports training code {target}")
    return sorted(set(bad))


def test_layer_of_examples():
    assert layer_of("mimicfast.errors") == "core"
    assert layer_of("mimicfast.kernels.l1_residual") == "kernels"
    assert layer_of("mimicfast.fast.loop") == "fast"
    assert layer_of("mimicfast.api") == "api"
    assert layer_of("mimicfast.evaluate.run") == "app"


def test_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "loop.py"
    fake.write_text("def f():\n    from mimicfast.models.guided_diffusion import UNetModel\n")
    targets = imported_modules("mimicfast.fast.loop", fake)
    assert "mimicfast.models.guided_diffusion" in targets
    assert LAYERS[layer_of("mimicfast.models.guided_diffusion")] > LAYERS[layer_of("mimicfast.fast.loop")]


@pytest.mark.parametrize("layer", [name for name in LAYERS if name != "app"])
def test_no_upward_imports(layer):
    bad = [edge for edge in upward_edges() if f"({layer}) imports" in edge]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
