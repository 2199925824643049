"""One set of upsample mode codes everywhere: mimicfast.upsample_mode.UpsampleMode, the C++ ``Upsample`` enum of
csrc/common/launch.h and the Triton kernel's constexprs.

Each backend receives the mode as its integer code. The direct checks compare the codes; the behavioural check
runs every code on every backend against the reference of the mode it names, on an input where the three modes
give three different residuals, so a swap of two codes in any layer fails here.
"""

from __future__ import annotations

import pytest
import torch

from mimicfast.ops import _dispatch, l1_residual
from mimicfast.reference.ops import l1_residual_reference
from mimicfast.upsample_mode import UpsampleMode

PYTHON_CODES = {m.name: m.value for m in UpsampleMode}


def test_cpp_codes_are_the_python_enum():
    ext, reason = _dispatch._extension()
    if ext is None:
        pytest.skip(reason)
    assert ext.upsample_modes == PYTHON_CODES


def test_triton_codes_are_the_python_enum():
    kernels = pytest.importorskip("mimicfast.kernels.l1_residual", reason="needs triton")
    assert kernels.BICUBIC.value == UpsampleMode.BICUBIC
    assert kernels.NEAREST.value == UpsampleMode.NEAREST


def test_every_backend_runs_the_mode_it_is_given(backend):
    name, device = backend
    gen = torch.Generator().manual_seed(0)
    x0_hat, y = torch.randn(2, 2, 1, 5, 7, generator=gen, dtype=torch.float64).to(device)
    expected = {m: l1_residual_reference(x0_hat, y, m.interpolate_mode, short_weight=0.5) for m in UpsampleMode}
    for a in UpsampleMode:
        for b in UpsampleMode:
            assert a == b or not torch.allclose(expected[a], expected[b]), (a, b)
    for mode in UpsampleMode:
        r = torch.ops.mimicfast.l1_residual(x0_hat, y, int(mode), None, 1.0, 0.5)
        torch.testing.assert_close(r, expected[mode], rtol=0, atol=1e-12, msg=f"{name}: {mode!r}")
        assert torch.equal(l1_residual(x0_hat, y, mode.interpolate_mode, short_weight=0.5), r)
