"""Bicubic x4 upsampling H and its adjoint H^T: ``mimicfast.ops.bicubic_up4`` / ``bicubic_up4_adjoint``.

``bicubic_up4(x) == F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)`` (Keys a = -0.75,
border clamp) and ``bicubic_up4_adjoint`` is its gradient (DESIGN.md §2: the short-range term of the
guidance loss). Registered as the custom ops ``mimicfast::bicubic_up4`` and ``mimicfast::bicubic_up4_adjoint``,
each the other's backward; the spec is :mod:`mimicfast.reference.ops`.
"""

from __future__ import annotations

import torch

from mimicfast.errors import InputError
from mimicfast.ops import _dispatch
from mimicfast.reference.ops import SCALE, bicubic_up4_adjoint_reference, bicubic_up4_reference


@torch.library.custom_op("mimicfast::bicubic_up4", mutates_args=())
def _bicubic_up4_op(x: torch.Tensor) -> torch.Tensor:
    backend = _dispatch.select(x.device)
    if backend == "reference":
        out = bicubic_up4_reference(x)
    elif backend == "triton":
        from mimicfast.kernels.bicubic_up4 import bicubic_up4_triton

        out = bicubic_up4_triton(x)
    else:
        guard, stream = _dispatch.launch_context(x)
        with guard:
            out = _dispatch.extension().bicubic_up4(x, stream)
    return _dispatch.to_layout(out, x)


@torch.library.custom_op("mimicfast::bicubic_up4_adjoint", mutates_args=())
def _bicubic_up4_adjoint_op(g: torch.Tensor) -> torch.Tensor:
    backend = _dispatch.select(g.device)
    if backend == "reference":
        with _dispatch.autograd_enabled():
            out = bicubic_up4_adjoint_reference(g)
    elif backend == "triton":
        from mimicfast.kernels.bicubic_up4 import bicubic_up4_adjoint_triton

        out = bicubic_up4_adjoint_triton(g)
    else:
        guard, stream = _dispatch.launch_context(g)
        with guard:
            out = _dispatch.extension().bicubic_up4_adjoint(g, stream)
    return _dispatch.to_layout(out, g)


@_bicubic_up4_op.register_fake
def _(x):
    b, c, h, w = x.shape
    return _dispatch.empty_like_layout((b, c, SCALE * h, SCALE * w), x, x.dtype)


@_bicubic_up4_adjoint_op.register_fake
def _(g):
    b, c, h, w = g.shape
    torch._check(h % SCALE == 0 and w % SCALE == 0, lambda: f"adjoint input {tuple(g.shape)} is not 4x upsampled")
    return _dispatch.empty_like_layout((b, c, h // SCALE, w // SCALE), g, g.dtype)


# H is linear: the backward of H is H^T and the backward of H^T is H.
_bicubic_up4_op.register_autograd(lambda ctx, grad: _bicubic_up4_adjoint_op(grad))
_bicubic_up4_adjoint_op.register_autograd(lambda ctx, grad: _bicubic_up4_op(grad))


def bicubic_up4(x: torch.Tensor) -> torch.Tensor:
    """H x: bicubic x4 upsampling, ``F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)``.

    Args:
        x: [B, C, H, W], fp16 / bf16 / fp32 / fp64, contiguous or channels_last.

    Returns:
        [B, C, 4H, 4W] in ``x.dtype`` and ``x``'s memory format (fp32 arithmetic; fp64 for fp64).
        Differentiable: its backward is :func:`bicubic_up4_adjoint`.
    """
    _dispatch.check_tensor("x", x)
    return _bicubic_up4_op(x)


def bicubic_up4_adjoint(g: torch.Tensor) -> torch.Tensor:
    """H^T g: the adjoint (gradient) of :func:`bicubic_up4`, so that ``<H x, g> = <x, H^T g>``.

    Args:
        g: [B, C, 4H, 4W], fp16 / bf16 / fp32 / fp64, contiguous or channels_last.

    Returns:
        [B, C, H, W] in ``g.dtype`` and ``g``'s memory format. Differentiable: its backward is
        :func:`bicubic_up4`.
    """
    _dispatch.check_tensor("g", g)
    if g.shape[-1] % SCALE or g.shape[-2] % SCALE:
        raise InputError(f"g has spatial size {tuple(g.shape[-2:])}, which is not a multiple of {SCALE}")
    return _bicubic_up4_adjoint_op(g)
