"""input_only_vjp (mimicfast.fast.input_vjp): the same input gradient as autograd, without the saved activations."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from mimicfast.fast import apply_policy, measure_footprint
from mimicfast.fast.input_vjp import input_only_vjp
from mimicfast.models.loader import load_guided_diffusion
from mimicfast.presets import get_preset
from mimicfast.sampling import as_denoiser
from mimicfast.sampling.step import denoise

CONVS = [
    (torch.nn.Conv2d(6, 9, 3, padding=1), (2, 6, 11, 7)),
    (torch.nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), groups=2), (3, 6, 13, 9)),
    (torch.nn.Conv2d(4, 4, 1, bias=False), (1, 4, 5, 5)),
    (torch.nn.Conv1d(8, 12, 1), (2, 8, 17)),
    (torch.nn.Conv1d(6, 6, 5, stride=2, padding=2, groups=3), (2, 6, 19)),
]


def _vjp(conv, x, cotangent, mode):
    x = x.detach().requires_grad_(True)
    with mode():
        out = conv(x)
    return out, torch.autograd.grad(out, x, cotangent)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index", range(len(CONVS)))
def test_input_gradient_equals_autograd_bitwise(index: int, dtype: torch.dtype) -> None:
    conv, shape = CONVS[index]
    conv = conv.to(dtype).requires_grad_(False)
    gen = torch.Generator().manual_seed(index)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    if x.dim() == 4 and index == 0:
        x = x.contiguous(memory_format=torch.channels_last)
    cotangent = torch.randn(conv(x).shape, generator=gen, dtype=dtype)
    out_ref, grad_ref = _vjp(conv, x, cotangent, contextlib.nullcontext)
    out, grad = _vjp(conv, x, cotangent, input_only_vjp)
    assert type(out.grad_fn).__name__ == "_ConvInputVJPBackward"  # the mode took the convolution
    assert torch.equal(out, out_ref) and torch.equal(grad, grad_ref)


def test_under_bf16_autocast_equals_autocast_bitwise() -> None:
    conv, shape = CONVS[1]
    conv = conv.float().requires_grad_(False)
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref = conv(x)
    cotangent = torch.randn(out_ref.shape, dtype=out_ref.dtype)
    results = []
    for mode in (contextlib.nullcontext, input_only_vjp):
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16), mode():
            out = conv(xg)
        results.append((out, torch.autograd.grad(out, xg, cotangent)[0]))
    (out_ref, grad_ref), (out, grad) = results
    assert out.dtype == torch.bfloat16 and grad.dtype == torch.float32
    assert torch.equal(out, out_ref) and torch.equal(grad, grad_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_group_norm32_of_16_bit_input_equals_autograd_bitwise(dtype, layout) -> None:
    """guided-diffusion's fp32 GroupNorm of a 16-bit activation saves the 16-bit tensor, not its fp32 copy."""
    from mimicfast.models.guided_diffusion import group_norm32

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 6, 5, generator=gen).to(dtype).contiguous(memory_format=layout)
    weight, bias = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    cotangent = torch.randn(x.shape, generator=gen).to(dtype)
    results = []
    for mode in (contextlib.nullcontext, input_only_vjp):
        xg = x.clone().requires_grad_(True)
        with mode():
            out = group_norm32(xg, 32, weight, bias, 1e-5)
        results.append((out, torch.autograd.grad(out, xg, cotangent)[0], out.grad_fn))
    (out_ref, grad_ref, _), (out, grad, grad_fn) = results
    assert type(grad_fn).__name__ == "_GroupNorm32InputVJPBackward" and out.dtype == dtype
    assert torch.equal(out, out_ref) and torch.equal(grad, grad_ref)


def test_leaves_other_convolutions_to_autograd() -> None:
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)  # trainable: its weight gradient needs the input
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    from mimicfast.models.guided_diffusion import group_norm32

    with input_only_vjp():
        out = conv(x)
        norm = group_norm32(x, 3, None, None, 1e-5)  # float32 input: autograd saves no extra copy anyway
        same = F.conv2d(x, conv.weight.detach(), padding="same")  # string padding: not handled
        with torch.no_grad():
            plain = conv(x)
    assert type(out.grad_fn).__name__ != "_ConvInputVJPBackward"
    assert type(norm.grad_fn).__name__ != "_GroupNorm32InputVJPBackward"
    assert type(same.grad_fn).__name__ != "_ConvInputVJPBackward" and plain.grad_fn is None
    out.sum().backward()
    assert conv.weight.grad is not None


@pytest.fixture(scope="module")
def gd_small(parity_dir):
    return load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test")


def _saved_bytes_and_vjp(denoiser, x, cotangent, mode, exclude):
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode():
            x0, _ = denoise(denoiser, xg, torch.tensor([2.0], device=x.device), True)
        return sum(seen.values()), torch.autograd.grad(x0, xg, cotangent)[0]


@pytest.mark.parametrize(
    "policy", [{}, dict(autocast="bf16"), dict(autocast="bf16", channels_last=True)], ids=["fp32", "bf16", "bf16-nhwc"]
)
@pytest.mark.parametrize("network", ["guided-diffusion", "edm"])
def test_network_vjp_is_unchanged_and_saves_less(gd_small, network, policy) -> None:
    from tests.models._edm_util import tiny_edm

    net = gd_small if network == "guided-diffusion" else tiny_edm(img_resolution=16).eval()
    denoiser = apply_policy(as_denoiser(net), **policy)
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    weights |= {t.untyped_storage().data_ptr() for t in getattr(denoiser, "_overrides", {}).values()}
    gen = torch.Generator().manual_seed(0)
    size = denoiser.image_size
    x, cotangent = torch.randn(2, 3, size, size, generator=gen), torch.randn(2, 3, size, size, generator=gen)
    plain_bytes, plain = _saved_bytes_and_vjp(denoiser, x, cotangent, contextlib.nullcontext, weights)
    lean_bytes, lean = _saved_bytes_and_vjp(denoiser, x, cotangent, input_only_vjp, weights)
    assert torch.equal(lean, plain)
    # The tiny EDM net's activations are mostly not convolution inputs; the full configs save 18-34% (README).
    assert lean_bytes < {"guided-diffusion": 0.8, "edm": 1.0}[network] * plain_bytes, f"{lean_bytes} vs {plain_bytes}"


def test_footprint_reflects_the_setting(gd_small) -> None:
    denoiser, preset = as_denoiser(gd_small), get_preset("paper")
    lean, plain = (
        measure_footprint(denoiser, preset, (3, 32, 32), device="cpu", input_only_vjp=flag) for flag in (True, False)
    )
    assert lean.per_image_bytes < plain.per_image_bytes


@pytest.mark.gpu
@pytest.mark.parametrize(("policy", "tolerance"), [({}, 1e-3), (dict(autocast="bf16", channels_last=True), 1e-2)],
                         ids=["fp32", "bf16-nhwc"])  # fmt: skip
def test_cuda_vjp_matches_autograd(parity_dir, policy, tolerance) -> None:
    """On cuDNN the stand-in may select another data-gradient algorithm: equal up to that rounding (TF32 in fp32)."""
    net = load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test", device="cuda")
    denoiser = apply_policy(as_denoiser(net).to("cuda"), **policy)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, cotangent = (torch.randn(4, 3, 32, 32, generator=gen, device="cuda") for _ in range(2))
    _, plain = _saved_bytes_and_vjp(denoiser, x, cotangent, contextlib.nullcontext, set())
    _, lean = _saved_bytes_and_vjp(denoiser, x, cotangent, input_only_vjp, set())
    rel = float((lean - plain).norm() / plain.norm())
    assert rel <= tolerance, f"relative difference {rel:.2e}"


def test_networks_register_their_float32_group_norms() -> None:
    """fast/ imports no network; guided-diffusion's group_norm32 is known to input_only_vjp through the registry."""
    from mimicfast.fast.input_vjp import _FP32_GROUP_NORMS
    from mimicfast.models.guided_diffusion import group_norm32

    assert group_norm32 in _FP32_GROUP_NORMS
