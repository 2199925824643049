"""`import mimicfast` is cheap and safe: no CUDA initialisation, no Triton import, no hard dependency on
the compiled extension (docs/DESIGN.md §3). Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_does_not_initialise_cuda_or_import_triton():
    _run(
        """
        import sys, torch
        import mimicfast
        from mimicfast.ops import l1_residual
        assert "triton" not in sys.modules
        mimicfast.backends()
        x = torch.randn(1, 3, 8, 8)
        l1_residual(x, torch.zeros_like(x))
        assert not torch.cuda.is_initialized()
        """
    )


def test_import_without_extension_or_triton_falls_back_to_reference():
    _run(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in ("mimicfast._C", "triton") or name.startswith("triton."):
                    raise ImportError(f"{name} blocked for this test")
                return None

        sys.meta_path.insert(0, Block())
        import torch, mimicfast
        from mimicfast.ops import bicubic_up4, l1_residual
        from mimicfast.reference.ops import l1_residual_reference
        report = mimicfast.backends()
        assert not report["cpp"]["available"] and "mimicfast._C" in report["cpp"]["reason"], report
        assert not report["triton"]["available"], report
        x, y = torch.randn(2, 3, 5, 7, dtype=torch.float64), torch.randn(2, 3, 5, 7, dtype=torch.float64)
        assert torch.equal(l1_residual(x, y), l1_residual_reference(x, y))
        assert bicubic_up4(x).shape == (2, 3, 20, 28)
        """
    )


def test_every_source_folder_is_a_package():
    """Wheels ship only folders with an ``__init__.py`` (setup.py's find_packages): one without it would be missing
    from ``pip install .`` (``mimicfast --help`` failed that way for mimicfast/train)."""
    folders = {path.parent for path in (REPO / "mimicfast").rglob("*.py")}
    missing = sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, missing
