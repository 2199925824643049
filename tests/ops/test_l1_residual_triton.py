"""The fused Triton guidance residual against ``l1_residual_reference`` (docs/DESIGN.md §4).

Tie rule: sign(0) = 0, as ``torch.sign``. "Exact away from ties": every sign of d and of H d agrees with the
float64 reference wherever no high-res |H d| in an output pixel's 16x16 window is below ``TIE``; we check it
on r itself, since one flipped sign moves r by at least 2 * short_weight * 0.0103^2 = 2.7e-4 here (0.0103 is
the smallest bicubic tap weight), far above the float32 rounding of the window sums (ATOL_32).

Without a GPU the kernel runs through the Triton interpreter (slow per operation): shapes stay tiny. The launcher
trusts its inputs; their validation is tested through the public op (tests/ops/test_l1_residual.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimicfast.reference.ops import l1_residual_reference, upsample_reference
from mimicfast.upsample_mode import UpsampleMode

_kernels = pytest.importorskip("mimicfast.kernels.l1_residual", reason="needs triton")
l1_residual_triton = _kernels.l1_residual_triton
BICUBIC, NEAREST = UpsampleMode.BICUBIC, UpsampleMode.NEAREST

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LONG, SHORT = 0.7, 1.3
TIE = 1e-5
ATOL_32 = 5e-5


def _pair(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn((2, *shape), generator=gen, dtype=torch.float64).to(device=DEVICE, dtype=dtype)
    return x, y


def _weight(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE) + 0.5


def _away_from_ties(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Low-res pixels whose 16x16 high-res window [4i - 6, 4i + 9] holds no |H d| < TIE (d in float64)."""
    near = (upsample_reference(x.double() - y.double(), "bicubic").abs() < TIE).double()
    return F.max_pool2d(near, kernel_size=16, stride=4, padding=6) == 0


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 37, 53), (2, 2, 9, 11), (1, 1, 1, 1), (3, 1, 2, 3), (1, 2, 5, 4)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_bicubic_matches_reference_float64(shape):
    x, y = _pair(*shape, seed=1)
    w = _weight(shape[0])
    r = l1_residual_triton(x, y, BICUBIC, w, LONG, SHORT)
    assert r.dtype == torch.float64 and r.shape == x.shape
    ref = l1_residual_reference(x, y, "bicubic", w, long_weight=LONG, short_weight=SHORT)
    torch.testing.assert_close(r, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bicubic_exact_away_from_ties(dtype):
    x, y = _pair(2, 3, 8, 10, dtype=dtype, seed=2)
    w = _weight(2, seed=2)
    r = l1_residual_triton(x, y, BICUBIC, w, LONG, SHORT)
    assert r.dtype == torch.float32
    exact = l1_residual_reference(x.double(), y.double(), "bicubic", w, long_weight=LONG, short_weight=SHORT)
    plain = l1_residual_reference(x, y, "bicubic", w, long_weight=LONG, short_weight=SHORT)
    keep = _away_from_ties(x, y)
    assert keep.double().mean() > 0.9, "too many near-ties for the test to mean anything"
    assert (r.double() - exact).abs()[keep].max() < ATOL_32
    assert (r - plain).abs()[keep].max() < ATOL_32
    # docs/DESIGN.md §4: error vs float64 at most ~2x plain PyTorch's in the same precision (the reference upcasts
    # half inputs to float32 too); the floor covers float32 rounding of O(1) values.
    err, err_plain = (r.double() - exact).norm(), (plain.double() - exact).norm()
    assert err <= 2 * err_plain + 1e-6 * exact.norm()


@pytest.mark.parametrize("upsample", [UpsampleMode.NEAREST, UpsampleMode.NONE])
def test_nearest_and_none_bit_exact(upsample):
    """H^T sign(H d) = 16 sign(d) for nearest x4, so these modes have no rounding beyond the reference's."""
    x, y = _pair(2, 3, 5, 7, dtype=torch.float32, seed=3)
    x = x.contiguous(memory_format=torch.channels_last)
    w = _weight(2, seed=3).float()
    y[0, 0, 0, :3] = x[0, 0, 0, :3]  # exact ties: sign(0) = 0
    r = l1_residual_triton(x, y, upsample, w, LONG, SHORT)
    assert r.is_contiguous(memory_format=torch.channels_last)
    ref = l1_residual_reference(x, y, upsample.interpolate_mode, w, long_weight=LONG, short_weight=SHORT)
    assert torch.equal(r, ref)
    assert torch.equal(r[0, 0, 0, :3], torch.zeros(3, device=DEVICE))


def test_channels_last_mixed_layouts_and_batch_independence():
    x, y = _pair(2, 3, 6, 9, dtype=torch.float32, seed=4)
    x = x.contiguous(memory_format=torch.channels_last)  # each input keeps its own strides
    # y: a view into a NaN-padded buffer (not dense); reading past its columns would leave NaN in r.
    padded = torch.full((2, 3, 6, 14), float("nan"), device=DEVICE)
    padded[..., :9] = y
    y = padded[..., :9]
    r = l1_residual_triton(x, y, BICUBIC, None, LONG, SHORT)
    assert r.is_contiguous(memory_format=torch.channels_last)
    ref = l1_residual_reference(x, y, "bicubic", long_weight=LONG, short_weight=SHORT)
    keep = _away_from_ties(x, y)
    assert (r - ref).abs()[keep].max() < ATOL_32
    # An image's residual does not depend on its batch-mates.
    alone = l1_residual_triton(x[1:].contiguous(), y[1:].contiguous(), BICUBIC, None, LONG, SHORT)
    assert torch.equal(alone[0], r[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_imagenet_shape(dtype, channels_last):
    x, y = _pair(4, 3, 256, 256, dtype=dtype, seed=5)
    if channels_last:
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    w = _weight(4, seed=5)
    r = l1_residual_triton(x, y, BICUBIC, w, LONG, SHORT)
    exact = l1_residual_reference(x.double(), y.double(), "bicubic", w, long_weight=LONG, short_weight=SHORT)
    keep = _away_from_ties(x, y)
    assert keep.double().mean() > 0.9
    assert (r.double() - exact).abs()[keep].max() < ATOL_32
    plain = l1_residual_reference(x, y, "bicubic", w, long_weight=LONG, short_weight=SHORT)
    assert torch.equal(
        l1_residual_triton(x, y, NEAREST, w, LONG, SHORT),
        l1_residual_reference(x, y, "nearest", w, long_weight=LONG, short_weight=SHORT),
    )
    err, err_plain = (r.double() - exact).norm(), (plain.double() - exact).norm()
    assert err <= 2 * err_plain + 1e-6 * exact.norm()
