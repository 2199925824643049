"""Input-only VJPs through frozen convolutions: keep the weight for backward, not the activation.

A guided step needs ``J^T r`` with respect to the network's *input* only; every weight is frozen. Autograd's
convolution nevertheless saves its input activation, which only the weight gradient reads. Inside
:func:`input_only_vjp`, a 1-d / 2-d convolution whose input requires grad and whose weight and bias do not
saves just the weight; its backward computes the input gradient with ``aten.convolution_backward`` on a
stride-0 stand-in of the input's shape (the same call as :func:`torch.nn.grad.conv2d_input`), so the result is
the same function, computed by the same kernel (bitwise equal on the CPU, tests/sampling/test_input_vjp.py).
Saved per image by a guided step, measured on the CPU: ImageNet-256 guided-diffusion UNet 3.38 -> 2.36 GiB under
bf16 autocast, 4.62 -> 3.12 GiB in fp32; EDM DDPM++ CIFAR-10 -18% (bf16) and -34% (fp32) (benches/README.md).

Under autocast the arguments are cast to the autocast dtype exactly as autocast casts a convolution's (weight,
input and bias to the lower precision), the convolution runs on them, and the gradient is cast back to the
input's dtype: what autocast's cast node and the convolution's own backward do, operation for operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONVS = {F.conv1d: 1, F.conv2d: 2}


def _expand(value: int | Sequence[int], n: int) -> list[int]:
    return [value] * n if isinstance(value, int) else list(value)


def _autocast_cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """What autocast does to a convolution argument: floating tensors other than float64 go to ``dtype``."""
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


class _ConvInputVJP(torch.autograd.Function):
    """``F.conv{1,2}d`` with a frozen weight; its backward returns the input gradient only."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.input_dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            x, weight, bias = (_autocast_cast(t, torch.get_autocast_dtype(x.device.type)) for t in (x, weight, bias))
        ctx.save_for_backward(weight)
        ctx.geometry = (x.shape, stride, padding, dilation, groups)
        # The backend picks its memory format from the input's layout too: keep that choice (and so the rounding).
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, enabled=False):
            return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.geometry
        # Only the stand-in's shape and layout are read for the input gradient, never its values.
        if ctx.channels_last:
            stand_in = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)
        else:
            stand_in = grad.new_empty(1).expand(shape)
        grad_input = torch.ops.aten.convolution_backward(
            grad, stand_in, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False],
        )[0]  # fmt: skip
        return grad_input.to(ctx.input_dtype), None, None, None, None, None, None


class input_only_vjp(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within this context, frozen-weight convolutions keep only their weights for backward (module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        n = _CONVS.get(func)
        if n is not None and torch.is_grad_enabled():
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            bound = dict(zip(names, args, strict=False))
            bound.update(kwargs)
            x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
            padding = bound.get("padding", 0)
            frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
            if x.requires_grad and frozen and not isinstance(padding, str) and x.dim() == n + 2:
                return _ConvInputVJP.apply(
                    x, weight, bias, _expand(bound.get("stride", 1), n), _expand(padding, n),
                    _expand(bound.get("dilation", 1), n), bound.get("groups", 1),
                )  # fmt: skip
        return func(*args, **kwargs)
