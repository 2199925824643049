"""Bicubic x4 upsampling H and its adjoint H^T: ``mimicfast.ops.bicubic_up4`` / ``bicubic_up4_adjoint``.

``bicubic_up4(x) == F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)`` (Keys a = -0.75,
border clamp) and ``bicubic_up4_adjoint`` is its gradient (docs/DESIGN.md §2: the short-range term of the
guidance loss). Registered as the custom ops ``mimicfast::bicubic_up4`` and ``mimicfast::bicubic_up4_adjoint``,
each the other's backward, with one kernel per backend behind :mod:`mimicfast.ops._dispatch`; the spec is
:mod:`mimicfast.reference.ops`.
"""

from __future__ import annotations

import torch

from mimicfast.errors import InputError
from mimicfast.kernels.tensors import empty_like_layout
from mimicfast.ops import _dispatch
from mimicfast.reference.ops import bicubic_up4_adjoint_reference, bicubic_up4_reference
from mimicfast.upsample_mode import SCALE

# The backends' kernels, called with validated inputs; each returns its result in its input's layout.


def _up_reference(x):
    return _dispatch.to_layout(bicubic_up4_reference(x), x)


def _up_triton(x):
    from mimicfast.kernels.bicubic_up4 import bicubic_up4_triton

    return bicubic_up4_triton(x)


def _up_cpp(x):
    return _dispatch.to_layout(_dispatch.extension().bicubic_up4_cpu(x), x)


def _up_cuda(x):
    guard, stream = _dispatch.cuda_launch(x)
    with guard:
        out = _dispatch.extension().bicubic_up4_cuda(x, stream)
    return _dispatch.to_layout(out, x)


def _adjoint_reference(g):
    with _dispatch.autograd_enabled():
        return _dispatch.to_layout(bicubic_up4_adjoint_reference(g), g)


def _adjoint_triton(g):
    from mimicfast.kernels.bicubic_up4 import bicubic_up4_adjoint_triton

    return bicubic_up4_adjoint_triton(g)


def _adjoint_cpp(g):
    return _dispatch.to_layout(_dispatch.extension().bicubic_up4_adjoint_cpu(g), g)


def _adjoint_cuda(g):
    guard, stream = _dispatch.cuda_launch(g)
    with guard:
        out = _dispatch.extension().bicubic_up4_adjoint_cuda(g, stream)
    return _dispatch.to_layout(out, g)


# The ops' own bodies serve devices other than the CPU and CUDA (whose kernels _dispatch.register adds).
@torch.library.custom_op("mimicfast::bicubic_up4", mutates_args=())
def _bicubic_up4_op(x: torch.Tensor) -> torch.Tensor:
    return _up_reference(x)


@torch.library.custom_op("mimicfast::bicubic_up4_adjoint", mutates_args=())
def _bicubic_up4_adjoint_op(g: torch.Tensor) -> torch.Tensor:
    return _adjoint_reference(g)


_dispatch.register(
    _bicubic_up4_op, {"reference": _up_reference, "triton": _up_triton, "cpp": _up_cpp, "cuda": _up_cuda}
)
_dispatch.register(
    _bicubic_up4_adjoint_op,
    {"reference": _adjoint_reference, "triton": _adjoint_triton, "cpp": _adjoint_cpp, "cuda": _adjoint_cuda},
)


@_bicubic_up4_op.register_fake
def _(x):
    b, c, h, w = x.shape
    return empty_like_layout((b, c, SCALE * h, SCALE * w), x, x.dtype)


@_bicubic_up4_adjoint_op.register_fake
def _(g):
    b, c, h, w = g.shape
    return empty_like_layout((b, c, h // SCALE, w // SCALE), g, g.dtype)


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
