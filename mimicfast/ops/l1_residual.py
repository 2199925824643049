"""The fused guidance residual ``mimicfast.ops.l1_residual`` (docs/DESIGN.md §2, paper Eq. 11-13).

    r_b = weight_b * (long_weight * sign(d_b) + short_weight * H^T sign(H d_b)),   d = x0_hat - y

is the gradient w.r.t. ``x0_hat`` of the per-sample guidance loss
``weight_b * (long_weight ||d_b||_1 + short_weight ||H d_b||_1)``, H the x4 upsampling. Registered as the
custom op ``mimicfast::l1_residual`` (fake kernel and autograd included, so it traces under
``torch.compile`` and captures in CUDA graphs; its ``upsample`` argument is an
:class:`~mimicfast.upsample_mode.UpsampleMode` code), with one kernel per backend behind
:mod:`mimicfast.ops._dispatch`. The spec is :func:`mimicfast.reference.ops.l1_residual_reference`.
"""

from __future__ import annotations

import torch

from mimicfast.errors import InputError
from mimicfast.kernels.tensors import compute_dtype, empty_like_layout
from mimicfast.ops import _dispatch
from mimicfast.reference.ops import l1_residual_reference
from mimicfast.upsample_mode import UpsampleMode

# The backends' kernels, called with validated inputs: (x0_hat, y, upsample code, weight, long_weight,
# short_weight) -> r in x0_hat's layout.


def _reference(x0_hat, y, upsample, weight, long_weight, short_weight):
    mode = UpsampleMode(upsample).interpolate_mode
    with _dispatch.autograd_enabled():
        r = l1_residual_reference(x0_hat, y, mode, weight, long_weight=long_weight, short_weight=short_weight)
    return _dispatch.to_layout(r, x0_hat)


def _triton(x0_hat, y, upsample, weight, long_weight, short_weight):
    from mimicfast.kernels.l1_residual import l1_residual_triton

    return l1_residual_triton(x0_hat, y, upsample, weight, long_weight, short_weight)


def _cpp(x0_hat, y, upsample, weight, long_weight, short_weight):
    r = _dispatch.extension().l1_residual_cpu(x0_hat, y, upsample, weight, long_weight, short_weight)
    return _dispatch.to_layout(r, x0_hat)


def _cuda(x0_hat, y, upsample, weight, long_weight, short_weight):
    guard, stream = _dispatch.cuda_launch(x0_hat)
    with guard:
        r = _dispatch.extension().l1_residual_cuda(x0_hat, y, upsample, weight, long_weight, short_weight, stream)
    return _dispatch.to_layout(r, x0_hat)


@torch.library.custom_op("mimicfast::l1_residual", mutates_args=())
def _l1_residual_op(
    x0_hat: torch.Tensor,
    y: torch.Tensor,
    upsample: int,
    weight: torch.Tensor | None,
    long_weight: float,
    short_weight: float,
) -> torch.Tensor:
    # Devices other than the CPU and CUDA (whose kernels _dispatch.register adds) run the portable reference.
    return _reference(x0_hat, y, upsample, weight, long_weight, short_weight)


_dispatch.register(_l1_residual_op, {"reference": _reference, "triton": _triton, "cpp": _cpp, "cuda": _cuda})


@_l1_residual_op.register_fake
def _(x0_hat, y, upsample, weight, long_weight, short_weight):
    return empty_like_layout(x0_hat.shape, x0_hat, compute_dtype(x0_hat.dtype))


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
    upsample: UpsampleMode | str | None = "bicubic",
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
            align_corners=False)``), ``"nearest"`` (released code) or ``None`` (long-range term only), or
            the :class:`~mimicfast.upsample_mode.UpsampleMode` member.
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
    mode = UpsampleMode.parse(upsample)
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (x0_hat.shape[0],):
            raise InputError(
                f"weight must be a tensor of shape [{x0_hat.shape[0]}], got {getattr(weight, 'shape', weight)}"
            )
        if not weight.is_floating_point() or weight.device != x0_hat.device:
            raise InputError(
                f"weight must be a floating tensor on {x0_hat.device}, got {weight.dtype} on {weight.device}"
            )
        weight = weight.contiguous()  # the kernels index it as a dense vector
    if x0_hat.dtype != y.dtype:
        dtype = compute_dtype(x0_hat.dtype)
        x0_hat, y = x0_hat.to(dtype), y.to(dtype)
    return _l1_residual_op(x0_hat, y, int(mode), weight, float(long_weight), float(short_weight))
