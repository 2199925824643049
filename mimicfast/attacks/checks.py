"""The argument checks every attack shares, and the types of its callables.

Conventions (docs/DESIGN.md §7): images are float tensors ``[B, C, H, W]`` in [0, 1]; ``model(x) -> logits
[B, K]`` is any differentiable callable, possibly stochastic (a purifier drawing fresh randomness on every call),
only ever called on the whole batch, in the same row order, a number of times that depends on the attack's
settings and never on the data (so a wrapper can give row i its own defense seeds per call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from mimicfast.errors import InputError

Model = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Seeds = int | Sequence[int]

NORMS = ("Linf", "L2")


def check_budget(*, eps: float, norm: str, steps: int, eot: int, finite: bool = True) -> None:
    """Validate an attack's budget (``eps`` may be ``inf`` unless ``finite``); raises InputError."""
    if not (eps >= 0 and (math.isfinite(eps) or not finite)):
        raise InputError(f"eps must be finite and >= 0, got {eps}" if finite else f"eps must be >= 0, got {eps}")
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if eot < 1:
        raise InputError(f"eot must be >= 1, got {eot}")


def check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """Validate the images ``x [B, C, H, W]`` in [0, 1] and their int64 labels ``y [B]``; raises InputError."""
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"x must be a float tensor [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if y.shape != (x.shape[0],) or y.dtype != torch.int64:
        raise InputError(f"y must hold one int64 label per image ({x.shape[0]}), got {y.dtype} {tuple(y.shape)}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise InputError("x must be in [0, 1]")


def check_args(
    x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int, eot: int, finite: bool = True
) -> None:
    """:func:`check_images` and :func:`check_budget`."""
    check_images(x, y)
    check_budget(eps=eps, norm=norm, steps=steps, eot=eot, finite=finite)


def logits_of(model: Model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as float32 logits, checked to be ``[B, K]``; raises InputError."""
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise InputError(f"model must return logits [B={x.shape[0]}, K], got {getattr(logits, 'shape', logits)!r}")
    return logits.float()
