"""The package's layers import one way (docs/DESIGN.md §3), checked from the source with ``ast``.

core <- reference, kernels <- ops <- sampling <- fast <- models <- api <- app (attacks, evaluate, training, the
bundled model) <- command (the command-line modules and the package root, which lazily exposes the public API).
A module may import its own layer and the layers below it, never a layer above; ``default`` (the bundled
model's runtime) never imports the training code; the reference (the spec) is imported only by ``ops``, as its
portable backend, so nothing else shares code with what it checks. Lazy imports inside functions count too, and
so do imports by name: a string constant that names a mimicfast module (``importlib.import_module("mimicfast.x")``,
the lazy table of ``mimicfast/__init__.py``, the command table of ``mimicfast/cli.py``). Every module must have
a layer: a new top-level module fails :func:`test_every_module_has_a_layer` until it is placed.
"""

from __future__ import annotations

import ast
import re
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
    "command": 8,
}
CORE = {
    "errors", "presets", "schedules", "upsample_mode", "_lazy", "safe_read", "atomic", "seeding", "validate", "decode",
    "outputs", "autograd_memory", "progress", "version",
}
API = {"api", "gradients", "purify_options"}
APP = {"attacks", "evaluate", "train", "classifier", "default"}
COMMANDS = {"cli", "purify_cli", "convert", "demo", "__main__", "evaluate.cli", "train.cli"}
# A string constant that is a dotted mimicfast module name: an import by name.
MODULE_NAME = re.compile(r"mimicfast(\.[A-Za-z_][A-Za-z0-9_]*)+")


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside mimicfast (``mimicfast.kernels.x`` is the Triton layer); None for
    a module no layer claims. ``mimicfast`` itself and its dunder attributes (``__version__``) are the root."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    if head == "" or (head.startswith("__") and head != "__main__"):
        return "command"
    if ".".join(parts[1:3]) in COMMANDS or head in COMMANDS:
        return "command"
    if head in CORE:
        return "core"
    if head in ("reference", "kernels", "ops", "sampling", "fast", "models"):
        return head
    if head == "_C":
        return "ext"
    if head in API:
        return "api"
    if head in APP:
        return "app"
    return None


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
    """Every mimicfast module that ``path`` imports (absolute or relative, at any depth of the file, or by a
    string constant naming it)."""
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
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            names = [node.value]
        else:
            continue
        found.update(name for name in names if name == "mimicfast" or name.startswith("mimicfast."))
    return found


def upward_edges() -> list[str]:
    bad = []
    for module, path in sources():
        src = layer_of(module)
        for target in imported_modules(module, path):
            dst = layer_of(target)
            if src is None or dst is None:
                continue  # reported by test_every_module_has_a_layer
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
    assert layer_of("mimicfast.evaluate.runner") == "app"
    assert layer_of("mimicfast.evaluate.cli") == "command"
    assert layer_of("mimicfast") == layer_of("mimicfast.__version__") == "command"
    assert layer_of("mimicfast.somewhere_new") is None


def test_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "loop.py"
    fake.write_text("def f():\n    from mimicfast.models.guided_diffusion import UNetModel\n")
    targets = imported_modules("mimicfast.fast.loop", fake)
    assert "mimicfast.models.guided_diffusion" in targets
    assert LAYERS[layer_of("mimicfast.models.guided_diffusion")] > LAYERS[layer_of("mimicfast.fast.loop")]


def test_checker_sees_imports_by_name(tmp_path):
    fake = tmp_path / "runner.py"
    fake.write_text(
        'import importlib\nTABLE = {"x": "mimicfast.purify_cli"}\n'
        'def f():\n    return importlib.import_module("mimicfast.demo")\n'
        'DOC = "see mimicfast.api for more"\n'
    )
    targets = imported_modules("mimicfast.evaluate.runner", fake)
    assert {"mimicfast.purify_cli", "mimicfast.demo"} <= targets and "mimicfast.api" not in targets
    assert LAYERS[layer_of("mimicfast.demo")] > LAYERS[layer_of("mimicfast.evaluate.runner")]


def test_the_root_and_the_command_table_are_seen():
    """The lazy table of the package root and the command table of the CLI are imports by name."""
    root = imported_modules("mimicfast", ROOT / "mimicfast" / "__init__.py")
    assert {"mimicfast.api", "mimicfast.default"} <= root
    commands = imported_modules("mimicfast.cli", ROOT / "mimicfast" / "cli.py")
    assert {"mimicfast.purify_cli", "mimicfast.evaluate.cli", "mimicfast.demo"} <= commands


def test_every_module_has_a_layer():
    unplaced = sorted(module for module, _ in sources() if layer_of(module) is None)
    unplaced += sorted(
        f"{target} (imported by {module})"
        for module, path in sources() for target in imported_modules(module, path) if layer_of(target) is None
    )
    assert not unplaced, "modules without a layer:\n" + "\n".join(unplaced)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_no_upward_imports(layer):
    bad = [edge for edge in upward_edges() if f"({layer}) imports" in edge]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
