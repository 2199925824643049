"""Reference implementations of the guidance ops (docs/DESIGN.md §2, paper Eq. 11-13).

The guidance loss of MimicDiffusion is ``||x0_hat - y||_1 + ||H(x0_hat) - H(y)||_1`` with H the x4
upsampling. Because H is linear, its gradient w.r.t. ``x0_hat`` is the *guidance residual*

    r = sign(d) + H^T sign(H d),   d = x0_hat - y,   sign(0) = 0.

These functions are the spec for ``mimicfast.ops`` and its Triton / C++ / CUDA kernels: they use
``F.interpolate`` and autograd only, and materialise the 16x larger upsampled tensor.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mimicfast.upsample_mode import SCALE

Upsample = Literal["bicubic", "nearest"] | None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16 / bf16 inputs are computed (and returned) in fp32; fp32 and fp64 stay as they are."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upsample_reference(x: torch.Tensor, mode: Literal["bicubic", "nearest"]) -> torch.Tensor:
    """H: x4 upsampling with PyTorch semantics ([B, C, H, W] -> [B, C, 4H, 4W]).

    ``bicubic`` is ``F.interpolate(mode="bicubic", align_corners=False)`` (Keys a = -0.75, border
    clamp), as the paper states; ``nearest`` is the default mode of ``F.interpolate``, which the
    authors' released code uses.
    """
    if mode == "bicubic":
        return F.interpolate(x, scale_factor=SCALE, mode="bicubic", align_corners=False)
    if mode == "nearest":
        return F.interpolate(x, scale_factor=SCALE, mode="nearest")
    raise ValueError(f"unknown upsample mode {mode!r}; expected 'bicubic' or 'nearest'")


def upsample_adjoint_reference(g: torch.Tensor, mode: Literal["bicubic", "nearest"]) -> torch.Tensor:
    """H^T: the adjoint of :func:`upsample_reference` ([B, C, 4H, 4W] -> [B, C, H, W]), by autograd."""
    if g.shape[-1] % SCALE or g.shape[-2] % SCALE:
        raise ValueError(f"adjoint input spatial size {tuple(g.shape[-2:])} is not a multiple of {SCALE}")
    shape = (*g.shape[:-2], g.shape[-2] // SCALE, g.shape[-1] // SCALE)
    with torch.enable_grad():
        x = torch.zeros(shape, dtype=g.dtype, device=g.device, requires_grad=True)
        (out,) = torch.autograd.grad(upsample_reference(x, mode), x, g)
    return out


def bicubic_up4_reference(x: torch.Tensor) -> torch.Tensor:
    """Bicubic x4 upsampling, ``F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)``."""
    return upsample_reference(x, "bicubic")


def bicubic_up4_adjoint_reference(g: torch.Tensor) -> torch.Tensor:
    """The backward of :func:`bicubic_up4_reference`: ``H^T g`` for ``g`` of shape [B, C, 4H, 4W]."""
    return upsample_adjoint_reference(g, "bicubic")


def l1_residual_reference(
    x0_hat: torch.Tensor,
    y: torch.Tensor,
    upsample: Upsample = "bicubic",
    weight: torch.Tensor | None = None,
    *,
    long_weight: float = 1.0,
    short_weight: float = 1.0,
) -> torch.Tensor:
    """The guidance residual: gradient of the weighted L1 guidance loss w.r.t. ``x0_hat``.

        r_b = weight_b * (long_weight * sign(d_b) + short_weight * H^T sign(H d_b)),  d = x0_hat - y

    which is d/d x0_hat of ``weight_b * (long_weight ||d_b||_1 + short_weight ||H d_b||_1)``
    (paper Eq. 11 + Eq. 12). With ``upsample=None`` only the long-range term is present.

    Args:
        x0_hat, y: [B, C, H, W], same shape; fp16 / bf16 / fp32 / fp64.
        upsample: ``"bicubic"`` (paper), ``"nearest"`` (released code) or ``None``.
        weight: optional per-sample weight, shape [B].
        long_weight, short_weight: scalar weights of the two terms.

    Returns:
        r, [B, C, H, W], float32 (float64 for float64 inputs).
    """
    if x0_hat.shape != y.shape:
        raise ValueError(f"x0_hat {tuple(x0_hat.shape)} and y {tuple(y.shape)} differ in shape")
    dtype = compute_dtype(x0_hat.dtype)
    d = x0_hat.to(dtype) - y.to(dtype)
    r = long_weight * torch.sign(d)
    if upsample is not None:
        r = r + short_weight * upsample_adjoint_reference(torch.sign(upsample_reference(d, upsample)), upsample)
    if weight is not None:
        r = r * weight.to(dtype).view(-1, *([1] * (r.dim() - 1)))
    return r
