"""mimicfast.ops.l1_residual against the spec l1_residual_reference, on every available backend.

Exactness of the sign residual: a single sign of H d that differs from the reference moves r by at least
2 * min|R_y R_x| (about 2e-4 per unit short_weight; computed by _min_flip), so agreement far within that
proves every sign equal; what remains is the rounding of the adjoint sum (none at all in float64 for the
C++ kernels, whose weights and partial sums are exact dyadic numbers). Without the bicubic term (nearest:
H^T sign(H d) = 16 sign(d); None) the residual must equal the reference bit for bit.
Tie rule: sign(0) = 0, for d and for H d.
"""

from __future__ import annotations

import pytest
import torch

from mimicfast.errors import InputError
from mimicfast.ops import l1_residual
from mimicfast.reference.ops import l1_residual_reference, upsample_reference
from mimicfast.upsample_mode import UpsampleMode

MODES = ["bicubic", "nearest", None]
SHAPES = [(1, 3, 37, 53), (4, 3, 8, 8), (2, 1, 1, 1), (1, 2, 2, 3), (3, 2, 5, 4)]


def _inputs(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0_hat = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    y = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    weight = torch.rand(shape[0], generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return x0_hat, y, weight


def _min_flip() -> float:
    """Smallest change of r (short_weight = 1) that one flipped sign of H d causes: 2 min |R_y(o, i) R_x(q, j)|."""
    h = upsample_reference(torch.eye(36, dtype=torch.float64).view(36, 1, 6, 6), "bicubic")
    return 2 * h.abs()[h != 0].min().item()


@pytest.mark.parametrize("upsample", MODES)
def test_float64_matches_reference(backend, shapes_for, upsample):
    name, device = backend
    for shape in shapes_for(SHAPES):
        x0_hat, y, weight = _inputs(shape, torch.float64, device)
        for w, lw, sw in ((None, 1.0, 1.0), (weight, 0.3, 0.7)):
            r = l1_residual(x0_hat, y, upsample, w, long_weight=lw, short_weight=sw)
            ref = l1_residual_reference(x0_hat, y, upsample, w, long_weight=lw, short_weight=sw)
            assert r.dtype == torch.float64 and r.shape == shape
            if upsample == "bicubic":
                torch.testing.assert_close(r, ref, rtol=0, atol=1e-12)
            elif w is None:
                assert torch.equal(r, ref), (shape, upsample)
            else:  # a backend may carry the scalar weights 0.3 / 0.7 with fewer than 53 bits (>= 48)
                torch.testing.assert_close(r, ref, rtol=2.0**-46, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("upsample", MODES)
def test_low_precision_matches_reference(full_backend, upsample, dtype):
    name, device = full_backend
    tol = _min_flip() / 8
    for shape in SHAPES[:3]:
        x0_hat, y, weight = _inputs(shape, dtype, device, seed=1)
        r = l1_residual(x0_hat, y, upsample, weight.float(), long_weight=0.5, short_weight=2.0)
        ref = l1_residual_reference(x0_hat, y, upsample, weight.float(), long_weight=0.5, short_weight=2.0)
        assert r.dtype == torch.float32
        if upsample == "bicubic":
            # the short term is scaled by 2 and by weight <= 1: a flip still exceeds 2 * tol
            torch.testing.assert_close(r, ref, rtol=0, atol=tol)
        else:  # +-(long + 16 short) * weight: no summation, so bitwise
            assert torch.equal(r, ref)


def test_ties_are_zero(full_backend):
    name, device = full_backend
    x0_hat, y, _ = _inputs((2, 3, 12, 10), torch.float64, device, seed=2)
    for upsample in MODES:
        assert torch.count_nonzero(l1_residual(y, y, upsample)) == 0
    # d = 0 on the left half: sign(0) = 0 there, and H d = 0 exactly wherever its stencil sees only zeros
    x0_hat[..., :5] = y[..., :5]
    r = l1_residual(x0_hat, y, "bicubic")
    assert torch.equal(r, l1_residual_reference(x0_hat, y, "bicubic"))
    assert torch.count_nonzero(r[..., :2]) == 0


def test_channels_last_and_mixed_layouts(full_backend):
    name, device = full_backend
    x0_hat, y, weight = _inputs((2, 3, 9, 7), torch.float32, device, seed=3)
    expected = l1_residual(x0_hat, y, "bicubic", weight)
    cl = torch.channels_last
    for a, b in ((x0_hat.to(memory_format=cl), y.to(memory_format=cl)), (x0_hat, y.to(memory_format=cl))):
        r = l1_residual(a, b, "bicubic", weight)
        torch.testing.assert_close(r, expected, rtol=0, atol=1e-6)
    assert l1_residual(x0_hat.to(memory_format=cl), y, "bicubic").is_contiguous(memory_format=cl)


def test_per_sample_independence_and_weight(full_backend):
    name, device = full_backend
    x0_hat, y, weight = _inputs((3, 2, 6, 5), torch.float64, device, seed=4)
    r = l1_residual(x0_hat, y, "bicubic", weight)
    for b in range(3):
        alone = l1_residual(x0_hat[b : b + 1], y[b : b + 1], "bicubic")
        assert torch.equal(r[b], alone[0] * weight[b])
    assert torch.count_nonzero(l1_residual(x0_hat, y, "bicubic", torch.zeros_like(weight))) == 0


def test_mixed_input_dtypes_follow_the_reference(full_backend):
    name, device = full_backend
    x0_hat, y, _ = _inputs((1, 2, 5, 6), torch.float16, device, seed=5)
    y32 = y.float() + 1e-3
    r = l1_residual(x0_hat, y32, "nearest")
    assert r.dtype == torch.float32
    assert torch.equal(r, l1_residual_reference(x0_hat, y32, "nearest"))


def test_weight_gradient():
    x0_hat, y, weight = _inputs((2, 2, 4, 3), torch.float64, "cpu", seed=6)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: l1_residual(x0_hat, y, "bicubic", w), (weight,))
    x = x0_hat.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(l1_residual(x, y, "bicubic").sum(), x, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(grad) == 0  # sign is piecewise constant: zero derivative almost everywhere


def test_opcheck(full_backend):
    name, device = full_backend
    x0_hat, y, weight = _inputs((2, 2, 5, 6), torch.float32, device, seed=7)
    op = torch.ops.mimicfast.l1_residual.default
    torch.library.opcheck(op, (x0_hat, y, UpsampleMode.BICUBIC, weight.requires_grad_(True), 1.0, 0.5))
    cl = x0_hat.to(memory_format=torch.channels_last)
    torch.library.opcheck(op, (cl, y, UpsampleMode.NEAREST, None, 2.0, 1.0))
    torch.library.opcheck(op, (x0_hat.double(), y.double(), UpsampleMode.NONE, None, 1.0, 1.0))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), "4-D"),
        ((torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)), "differ in shape"),
        ((torch.zeros(1, 3, 4, 4, dtype=torch.int64), torch.zeros(1, 3, 4, 4)), "float16"),
        ((torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), "bilinear"), "unknown upsample"),
        ((torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), "bicubic", torch.ones(3)), "shape \\[2\\]"),
        (("x", torch.zeros(2, 3, 4, 4)), "torch.Tensor"),
    ],
)
def test_bad_input_names_the_problem(args, match):
    with pytest.raises(InputError, match=match):
        l1_residual(*args)


def test_strided_weight(backend):
    """A weight that is a strided view gives the same residual as its dense copy (the kernels read a dense [B])."""
    name, device = backend
    x0_hat, y, weight = _inputs((3, 1, 2, 3), torch.float32, device, seed=8)
    strided = torch.stack([weight, -weight], dim=1)[:, 0]
    assert not strided.is_contiguous()
    assert torch.equal(l1_residual(x0_hat, y, "nearest", strided), l1_residual(x0_hat, y, "nearest", weight))
