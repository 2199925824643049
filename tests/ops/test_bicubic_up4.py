"""mimicfast.ops.bicubic_up4 / bicubic_up4_adjoint against F.interpolate and its autograd, every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimicfast.errors import InputError
from mimicfast.ops import bicubic_up4, bicubic_up4_adjoint
from mimicfast.reference.ops import bicubic_up4_adjoint_reference, bicubic_up4_reference

SHAPES = [(1, 3, 37, 53), (4, 3, 8, 8), (2, 1, 1, 1), (1, 2, 2, 3), (3, 2, 5, 4)]


def _randn(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _up4_shape(shape):
    return (*shape[:2], 4 * shape[2], 4 * shape[3])


def test_float64_matches_reference(backend, shapes_for):
    name, device = backend
    for shape in shapes_for(SHAPES):
        x = _randn(shape, torch.float64, device)
        g = _randn(_up4_shape(shape), torch.float64, device, seed=1)
        torch.testing.assert_close(bicubic_up4(x), bicubic_up4_reference(x), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(bicubic_up4_adjoint(g), bicubic_up4_adjoint_reference(g), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_error_at_most_twice_pytorch(full_backend, dtype):
    """docs/DESIGN.md §4: error against the float64 reference <= ~2x that of plain PyTorch in the same dtype."""
    name, device = full_backend
    shape = SHAPES[1]
    x = _randn(shape, torch.float64, device, seed=2)
    g = _randn(_up4_shape(shape), torch.float64, device, seed=3)
    for fast, ref, inp in (
        (bicubic_up4, bicubic_up4_reference, x),
        (bicubic_up4_adjoint, bicubic_up4_adjoint_reference, g),
    ):
        exact = ref(inp.to(dtype).double())
        out = fast(inp.to(dtype))
        assert out.dtype == dtype
        err = (out.double() - exact).abs().max().item()
        err_torch = (ref(inp.to(dtype)).double() - exact).abs().max().item()
        assert err <= 2 * err_torch + 1e-6, (fast.__name__, err, err_torch)


def test_adjoint_identity_float64(backend, shapes_for):
    """<H x, g> = <x, H^T g>."""
    name, device = backend
    for shape in shapes_for(SHAPES):
        x = _randn(shape, torch.float64, device, seed=4)
        g = _randn(_up4_shape(shape), torch.float64, device, seed=5)
        lhs = torch.sum(bicubic_up4(x) * g)
        rhs = torch.sum(x * bicubic_up4_adjoint(g))
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_channels_last(full_backend):
    name, device = full_backend
    x = _randn((2, 3, 5, 7), torch.float32, device, seed=6)
    g = _randn((2, 3, 20, 28), torch.float32, device, seed=7)
    cl = torch.channels_last
    up, adj = bicubic_up4(x.to(memory_format=cl)), bicubic_up4_adjoint(g.to(memory_format=cl))
    assert up.is_contiguous(memory_format=cl) and adj.is_contiguous(memory_format=cl)
    torch.testing.assert_close(up, F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False))
    torch.testing.assert_close(adj, bicubic_up4_adjoint_reference(g), rtol=1e-5, atol=1e-5)


def test_autograd_gradcheck(full_backend):
    name, device = full_backend
    x = _randn((1, 2, 3, 4), torch.float64, device, seed=8).requires_grad_(True)
    g = _randn((1, 2, 8, 4), torch.float64, device, seed=9).requires_grad_(True)
    assert torch.autograd.gradcheck(bicubic_up4, (x,))
    assert torch.autograd.gradcheck(bicubic_up4_adjoint, (g,))
    assert torch.autograd.gradgradcheck(bicubic_up4, (x,))


def test_backward_is_pytorch_gradient(full_backend):
    name, device = full_backend
    x = _randn((2, 3, 6, 5), torch.float64, device, seed=10).requires_grad_(True)
    g = _randn((2, 3, 24, 20), torch.float64, device, seed=11)
    (ours,) = torch.autograd.grad(bicubic_up4(x), x, g)
    (theirs,) = torch.autograd.grad(F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False), x, g)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-12)


def test_opcheck(full_backend):
    name, device = full_backend
    x = _randn((2, 2, 3, 5), torch.float32, device, seed=12).requires_grad_(True)
    g = _randn((2, 2, 12, 20), torch.float32, device, seed=13).requires_grad_(True)
    torch.library.opcheck(torch.ops.mimicfast.bicubic_up4.default, (x,))
    torch.library.opcheck(torch.ops.mimicfast.bicubic_up4_adjoint.default, (g,))
    torch.library.opcheck(torch.ops.mimicfast.bicubic_up4.default, (x.detach().to(memory_format=torch.channels_last),))


def test_bad_input_names_the_problem():
    with pytest.raises(InputError, match="multiple of 4"):
        bicubic_up4_adjoint(torch.zeros(1, 1, 6, 8))
    with pytest.raises(InputError, match="4-D"):
        bicubic_up4(torch.zeros(3, 4, 4))
    with pytest.raises(InputError, match="float16"):
        bicubic_up4(torch.zeros(1, 1, 4, 4, dtype=torch.int32))
