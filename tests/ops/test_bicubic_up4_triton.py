"""Triton kernels of H (bicubic x4 upsampling) and H^T against the reference (docs/DESIGN.md §4).

Without a GPU they run through the Triton interpreter (TRITON_INTERPRET=1, tests/conftest.py), which pays per
program and per operation: shapes stay tiny. Tolerances: float64 results agree with F.interpolate / autograd
to 1e-12 (rounding of <= 256-term sums of O(1) values); float32 to 5e-6 absolute for H (16-term sums of O(1)
values) and 1e-5 relative + absolute for H^T (256-term sums, results up to ~5).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimicfast.reference.ops import bicubic_up4_adjoint_reference, bicubic_up4_reference

_kernels = pytest.importorskip("mimicfast.kernels.bicubic_up4", reason="needs triton")
bicubic_up4_triton = _kernels.bicubic_up4_triton
bicubic_up4_adjoint_triton = _kernels.bicubic_up4_adjoint_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Odd, tiny (H or W < 4, where clamping folds several taps onto one pixel) and batch > 1.
SHAPES = [(1, 3, 37, 53), (2, 2, 5, 7), (1, 1, 1, 1), (3, 1, 2, 3), (1, 2, 4, 1)]


def _randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_interpolate_float64(shape):
    x = _randn(*shape, seed=1)
    out = bicubic_up4_triton(x)
    assert out.shape == (shape[0], shape[1], 4 * shape[2], 4 * shape[3]) and out.dtype == torch.float64
    torch.testing.assert_close(out, bicubic_up4_reference(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_adjoint_matches_autograd_and_identity_float64(shape):
    b, c, h, w = shape
    x = _randn(*shape, seed=2)
    g = _randn(b, c, 4 * h, 4 * w, seed=3)
    hg = bicubic_up4_adjoint_triton(g)
    torch.testing.assert_close(hg, bicubic_up4_adjoint_reference(g), rtol=0, atol=1e-12)
    # <H x, g> = <x, H^T g>, both sides from the Triton kernels.
    lhs = (bicubic_up4_triton(x) * g).sum()
    rhs = (x * hg).sum()
    assert abs(lhs - rhs) <= 1e-12 * (bicubic_up4_triton(x).abs() * g.abs()).sum()


def test_adjoint_odd_shape_float64():
    """The odd shape of docs/DESIGN.md §4, 3x37x53, once (interpreter time): gathers over 3 row tiles, border columns too."""
    g = _randn(1, 3, 4 * 37, 4 * 53, seed=4)
    torch.testing.assert_close(bicubic_up4_adjoint_triton(g), bicubic_up4_adjoint_reference(g), rtol=0, atol=1e-12)


def test_float32_and_channels_last():
    x = _randn(2, 3, 6, 9, dtype=torch.float32, seed=5).contiguous(memory_format=torch.channels_last)
    out = bicubic_up4_triton(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    torch.testing.assert_close(out, bicubic_up4_reference(x), rtol=0, atol=5e-6)
    g = _randn(2, 3, 24, 36, dtype=torch.float32, seed=6).contiguous(memory_format=torch.channels_last)
    hg = bicubic_up4_adjoint_triton(g)
    assert hg.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(hg, bicubic_up4_adjoint_reference(g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_error_at_most_twice_pytorch(dtype):
    """docs/DESIGN.md §4: error vs a float64 reference at most ~2x that of PyTorch in the same precision."""
    x = _randn(1, 2, 7, 5, dtype=dtype, seed=7)
    exact = bicubic_up4_reference(x.double())
    out = bicubic_up4_triton(x)
    assert out.dtype == dtype
    err = (out.double() - exact).norm()
    assert err <= 2 * (bicubic_up4_reference(x).double() - exact).norm() + 1e-12

    g = _randn(1, 2, 28, 20, dtype=dtype, seed=8)
    exact_t = bicubic_up4_adjoint_reference(g.double())
    hg = bicubic_up4_adjoint_triton(g)
    assert hg.dtype == dtype
    err_t = (hg.double() - exact_t).norm()
    assert err_t <= 2 * (bicubic_up4_adjoint_reference(g).double() - exact_t).norm() + 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_imagenet_shape(dtype):
    x = _randn(2, 3, 256, 256, dtype=dtype, seed=9)
    exact = F.interpolate(x.double(), scale_factor=4, mode="bicubic", align_corners=False)
    err = (bicubic_up4_triton(x).double() - exact).norm()
    assert err <= 2 * (bicubic_up4_reference(x).double() - exact).norm() + 1e-9 * exact.norm()
    g = _randn(2, 3, 1024, 1024, dtype=dtype, seed=10)
    exact_t = bicubic_up4_adjoint_reference(g.double())
    err_t = (bicubic_up4_adjoint_triton(g).double() - exact_t).norm()
    assert err_t <= 2 * (bicubic_up4_adjoint_reference(g).double() - exact_t).norm() + 1e-9 * exact_t.norm()
