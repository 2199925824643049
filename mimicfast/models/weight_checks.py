"""Checks on weights before they enter a network: the network is built on the ``meta`` device (shapes only, no
memory), a state dict's keys and shapes are compared with it, and every tensor must be a usable weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mimicfast.errors import CheckpointError
from mimicfast.safe_read import one_line

__all__ = ["build_on_meta", "check_weights", "short", "state_dict_mismatch"]

_SHOW = 5  # how many offending keys an error message lists
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def short(value: Any) -> str:
    """repr of a key for a message, cut to 80 characters (the pickle walk bounds what repr visits)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_weights(tensors: Mapping[str, Tensor], source: str, *, floating_only: bool = True) -> None:
    """Refuse weights a network cannot use: every tensor must be a plain dense (strided) CPU tensor of a
    floating dtype (float16/bfloat16/float32/float64; with ``floating_only=False`` also integer or bool), own at
    least as many bytes of storage as it has elements (no zero-stride views inflating a tiny file), and hold only
    finite values.

    NaN/Inf weights would make every purified image NaN (black PNGs, exit 0); sparse, meta, quantized or
    integer weights fail later with an unrelated traceback (or, copied into a float network, load silently).

    Raises:
        CheckpointError: naming ``source``, the first offending key and what is wrong with it.
    """
    for key, t in tensors.items():
        problem = None
        if type(t) not in (Tensor, nn.Parameter):
            problem = f"is a {type(t).__name__}, not a plain tensor"
        elif t.layout != torch.strided:
            problem = f"is a {str(t.layout).removeprefix('torch.')} tensor; only dense tensors are weights"
        elif t.is_meta:
            problem = "is a meta tensor (a shape without data)"
        elif t.device.type != "cpu":
            problem = f"is on {t.device}, not the CPU"
        elif t.dtype not in _WEIGHT_DTYPES and (floating_only or t.is_complex() or t.is_quantized):
            problem = f"has dtype {str(t.dtype).removeprefix('torch.')}; weights must be floating point"
        elif t.numel() * t.element_size() > t.untyped_storage().nbytes() - t.storage_offset() * t.element_size():
            # A few bytes of storage viewed with zero strides as billions of elements: refused before any pass.
            problem = f"views {t.numel()} elements over {t.untyped_storage().nbytes()} bytes of storage (overlapping)"
        elif t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            problem = f"has {bad} non-finite values (NaN or Inf)"
        if problem is not None:
            raise CheckpointError(f"{source}: weight {short(key)} {problem}")


def state_dict_mismatch(model: nn.Module | Mapping[str, torch.Size], sd: Mapping[str, Tensor]) -> str | None:
    """Describe how ``sd`` differs from the model's keys/shapes (or a ``key -> shape`` mapping), or None if it
    loads strictly."""
    expected = {k: v.shape for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else model
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k}: file {list(sd[k].shape)} vs model {list(shape)}"
        for k, shape in expected.items()
        if k in sd and sd[k].shape != shape
    ]
    parts = [
        f"{len(items)} {label} ({', '.join(items[:_SHOW])}{', ...' if len(items) > _SHOW else ''})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrongly shaped keys", shaped),
        )
        if items
    ]
    return "; ".join(parts) or None


def build_on_meta(build: Callable[[], nn.Module], what: str) -> nn.Module:
    """Build an architecture without allocating weights (shapes only). The config is validated already; a
    combination the constructors still refuse (e.g. channels not divisible by the head count) is one line."""
    try:
        with torch.device("meta"):
            return build()
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        raise CheckpointError(f"invalid {what} config: {one_line(e)}") from None
