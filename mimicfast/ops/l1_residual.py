"""The fused guidance residual ``mimicfast.ops.l1_residual`` (DESIGN.md §2, paper Eq. 11-13).

    r_b = weight_b * (long_weight * sign(d_b) + short_weight * H^T sign(H d_b)),   d = x0_hat - y

is the gradient w.r.t. ``x0_hat`` of the per-sample guidance loss
``weight_b * (long_weight ||d_b||_1 + short_weight ||H d_b||_1)``, H the x4 upsampling. Registered as the
custom op ``mimicfast::l1_residual`` (fake kernel and autograd included, so it traces under
``torch.compile`` and captures in CUDA graphs); each call runs on the backend chosen by
:func:`mimicfast.ops._dispatch.select`. The spec is :func:`mimicfast.reference.ops.l1_residual_reference`.
"""

from __future__ import annotations

from typing import Literal

import torch

from mimicfast.errors import InputError
from mimicfast.ops import _dispatch
from mimicfast.reference.ops import l1_residual_reference

# Upsample mode as the op schema spells it (a str; None is "none") -> the code of csrc/common/launch.h.
_MODES = {"none": 0, "bicubic": 1, "nearest": 2}


@torch.library.custom_op("mimicfast::l1_residual", mutates_args=())
def _l1_residual_op(
    x0_hat: torch.Tensor,
    y: torch.Tensor,
    upsample: str,
    weight: torch.Tensor | None,
    long_weight: float,
    short_weight: float,
) -> torch.Tensor:
    backend = _dispatch.select(x0_hat.device)
    mode = None if upsample == "none" else upsample
    if backend == "reference":
        with _dispatch.autograd_enabled():
            r = l1_residual_reference(x0_hat, y, mode, weight, long_weight=long_weight, short_weight=short_weight)
    elif backend == "triton":
        from mimicfast.kernels.l1_residual import l1_residual_triton

        r = l1_residual_triton(x0_hat, y, mode, weight, long_weight, short_weight)
    else:
        guard, stream = _dispatch.launch_context(x0_hat)
        with guard:
            r = _dispatch.extension().l1_residual(
                x0_hat, y, _MODES[upsample], weight, long_weight, short_weight, stream
            )
    return _dispatch.to_layout(r, x0_hat)


@_l1_residual_op.register_fake
def _(x0_hat, y, upsample, weight, long_weight, short_weight):
    return _dispatch.empty_like_layout(x0_hat.shape, x0_hat, _dispatch.compute_dtype(x0_hat.dtype))


def _setup_context(ctx, inputs, output):
    x0_hat, y, upsample, weight, long_weight, short_weight = inputs
    ctx.save_for_backward(x0_hat, y, weight)
    ctx.args = (upsample, long_weight, short_weight)


def _backward(ctx, grad):
    # r is piecewise constant in x0_hat and y (sign), so their derivative is zero almost everywhere;
    # r is linear in weight_b with coefficient the unweighted residual.
    x0_hat, y, weight = ctx.saved_tensors
    grad_weight = None
    if ctx.needs_input_grad[3]:
        r0 = _l1_residual_op(x0_hat, y, ctx.args[0], None, ctx.args[1], ctx.args[2])
        grad_weight = (grad * r0).sum(dim=(1, 2, 3)).to(weight.dtype)
    return None, None, None, grad_weight, None, None


_l1_residual_op.register_autograd(_backward, setup_context=_setup_context)


def l1_residual(
    x0_hat: torch.Tensor,
    y: torch.Tensor,
    upsample: Literal["bicubic", "nearest"] | None = "bicubic",
    weight: torch.Tensor | None = None,
    *,
    long_weight: float = 1.0,
    short_weight: float = 1.0,
) -> torch.Tensor:
    """Fused guidance residual ``r = weight_b (long_weight sign(d) + short_weight H^T sign(H d))``.

    One pass per backend: the upsampled tensor ``H d`` (16x larger) never exists in memory. Tie rule:
    ``sign(0) = 0``, for ``d`` and for ``H d`` alike. NaN in ``d`` is not checked (no host sync); what it
    yields is backend-specific.

    Args:
        x0_hat: [B, C, H, W], the denoiser's clean-image estimate; fp16 / bf16 / fp32 / fp64; contiguous
            or channels_last. Arithmetic is fp32 (fp64 for fp64 inputs).
        y: [B, C, H, W], the adversarial image (same shape and device; a different float dtype is cast to
            the arithmetic dtype first).
        upsample: H: ``"bicubic"`` (paper: ``F.interpolate(scale_factor=4, mode="bicubic",
            align_corners=False)``), ``"nearest"`` (released code) or ``None`` (long-range term only).
        weight: optional per-sample weight, shape [B], floating, on the same device.
        long_weight, short_weight: scalar weights of the two terms.

    Returns:
        r, [B, C, H, W], float32 (float64 for float64 inputs), in ``x0_hat``'s memory format.
    """
    _dispatch.check_tensor("x0_hat", x0_hat)
    _dispatch.check_tensor("y", y)
    if x0_hat.shape != y.shape:
        raise InputError(f"x0_hat {tuple(x0_hat.shape)} and y {tuple(y.shape)} differ in shape")
    if x0_hat.device != y.device:
        raise InputError(f"x0_hat is on {x0_hat.device} but y is on {y.device}")
    if upsample not in ("bicubic", "nearest", None):
        raise InputError(f"unknown upsample mode {upsample!r}; expected 'bicubic', 'nearest' or None")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (x0_hat.shape[0],):
            raise InputError(f"weight must be a tensor of shape [{x0_hat.shape[0]}], got {getattr(weight, 'shape', weight)}")
        if not weight.is_floating_point() or weight.device != x0_hat.device:
            raise InputError(f"weight must be a floating tensor on {x0_hat.device}, got {weight.dtype} on {weight.device}")
    if x0_hat.dtype != y.dtype:
        dtype = _dispatch.compute_dtype(x0_hat.dtype)
        x0_hat, y = x0_hat.to(dtype), y.to(dtype)
    return _l1_residual_op(
        x0_hat, y, "none" if upsample is None else upsample, weight, float(long_weight), float(short_weight)
    )
