"""Input-only VJPs through a frozen network: keep what the input gradient needs, not what weight gradients need.

A guided step needs ``J^T r`` with respect to the network's *input* only; every weight is frozen. Autograd still
saves what the weight gradients would read, and under autocast the float32 copies that mixed precision makes.
Inside :class:`input_only_vjp`:

* a 1-d / 2-d convolution whose input requires grad and whose weight and bias do not saves just the weight; its
  backward computes the input gradient with ``aten.convolution_backward`` on a stand-in of the input's shape and
  layout (stride 0 when contiguous: the same call as :func:`torch.nn.grad.conv2d_input`);
* a float32 GroupNorm of a 16-bit activation (a function a network registered with
  :func:`register_fp32_group_norm`) saves that activation instead of its float32 copy and casts it again in
  backward (exact: every 16-bit value is a float32 value), then calls ``native_group_norm_backward`` as
  autograd's formula does.

The results are the same functions computed by the same kernels: bitwise equal on the CPU
(tests/fast/test_input_vjp.py). Under autocast, convolution arguments are cast as autocast casts them and the
input gradient is cast back to the input's dtype, as autocast's cast node does. Saved per image by a guided step,
measured on the CPU (benches/README.md): the ImageNet 256x256 UNet 3.38 -> 1.57 GiB under bf16 autocast, 4.62 ->
3.12 GiB in fp32; the CIFAR-10 UNet -18% (bf16) and -34% (fp32).

This module knows no concrete network: networks declare their float32 GroupNorm functions in a registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format
from torch.overrides import TorchFunctionMode

_CONVS = {F.conv1d: 1, F.conv2d: 2}
_FP32_GROUP_NORMS: set[Callable] = set()


def register_fp32_group_norm(fn: Callable) -> Callable:
    """Declare ``fn(x, num_groups, weight, bias, eps) -> Tensor`` a group norm computed in at least float32 and
    returned in ``x``'s dtype, so that :class:`input_only_vjp` may save its 16-bit input instead of the float32 copy.

    ``fn`` must route through ``__torch_function__`` (``handle_torch_function`` when ``has_torch_function``), as
    :class:`input_only_vjp` is a ``TorchFunctionMode``. Returns ``fn`` (usable as a decorator).
    """
    _FP32_GROUP_NORMS.add(fn)
    return fn


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
        # The backend picks its memory format from the input's suggested one too: keep that choice (and the rounding).
        ctx.memory_format = suggest_memory_format(x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.geometry
        # Only the stand-in's shape and layout are read for the input gradient, never its values.
        if ctx.memory_format == torch.contiguous_format:
            stand_in = grad.new_empty(1).expand(shape)
        else:
            stand_in = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format)
        grad_input = torch.ops.aten.convolution_backward(
            grad, stand_in, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False],
        )[0]  # fmt: skip
        return grad_input.to(ctx.input_dtype), None, None, None, None, None, None


def _group_norm_input(xf: torch.Tensor) -> torch.Tensor:
    """The tensor ``F.group_norm`` hands to ``native_group_norm`` (and autograd saves): ATen's layout rule, the
    suggested memory format on the CPU, contiguous elsewhere."""
    if xf.device.type == "cpu":
        return xf.contiguous(memory_format=suggest_memory_format(xf))
    return xf.contiguous()


class _GroupNorm32InputVJP(torch.autograd.Function):
    """A registered float32 group norm of a 16-bit ``x`` with frozen affine parameters, saving ``x`` instead of
    its fp32 copy."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        cdt = torch.promote_types(x.dtype, torch.float32)
        weight = None if weight is None else weight.to(cdt)
        bias = None if bias is None else bias.to(cdt)
        xf = _group_norm_input(x.to(cdt))
        n, c = x.shape[:2]
        with torch.autocast(x.device.type, enabled=False):
            out, mean, rstd = torch.ops.aten.native_group_norm(xf, weight, bias, n, c, x.numel() // (n * c),
                                                               num_groups, eps)  # fmt: skip
        ctx.save_for_backward(x, weight, mean, rstd)  # x in 16 bits: half the bytes of xf
        ctx.num_groups = num_groups
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        xf = _group_norm_input(x.to(mean.dtype))  # exact: every 16-bit value is a float32 value
        n, c = x.shape[:2]
        # As autograd's own formula: the kernels expect the output gradient in the input's memory format.
        grad_out = grad.to(mean.dtype).contiguous(memory_format=suggest_memory_format(xf))
        grad_input = torch.ops.aten.native_group_norm_backward(
            grad_out, xf, mean, rstd, weight, n, c, x.numel() // (n * c), ctx.num_groups, [True, False, False]
        )[0]
        return grad_input.to(x.dtype), None, None, None, None


def _frozen(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or not t.requires_grad for t in tensors)


class input_only_vjp(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within this context, frozen convolutions keep only their weights for backward and registered fp32 GroupNorms
    keep their 16-bit input (module docstring); every other call runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FP32_GROUP_NORMS and torch.is_grad_enabled() and not kwargs:
            x, num_groups, weight, bias, eps = args
            if x.requires_grad and x.dtype in (torch.bfloat16, torch.float16) and _frozen(weight, bias):
                return _GroupNorm32InputVJP.apply(x, num_groups, weight, bias, eps)
        n = _CONVS.get(func)
        if n is not None and torch.is_grad_enabled():
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            bound = dict(zip(names, args, strict=False))
            bound.update(kwargs)
            x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
            padding = bound.get("padding", 0)
            if x.requires_grad and _frozen(weight, bias) and not isinstance(padding, str) and x.dim() == n + 2:
                return _ConvInputVJP.apply(
                    x, weight, bias, _expand(bound.get("stride", 1), n), _expand(padding, n),
                    _expand(bound.get("dilation", 1), n), bound.get("groups", 1),
                )  # fmt: skip
        return func(*args, **kwargs)
