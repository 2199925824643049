"""The checks of what users hand the package: image batches, labels, norms, budgets and counts.

One function per kind of value, each raising :class:`mimicfast.errors.InputError` with one line that names the
value and what is wrong, so the API, the attacks, the evaluator and the commands refuse the same things with
the same words. ``name`` is how the message calls the value (``"x"``, ``"--batch-size"``, ...).
"""

from __future__ import annotations

import math
import numbers

import torch

from mimicfast.errors import InputError

NORMS = ("Linf", "L2")
"""The threat models the attacks and the evaluator support."""


def plural(count: int, noun: str) -> str:
    """``"1 channel"``, ``"3 channels"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_images(
    x: object, *, channels: int | None = None, size: int | None = None, name: str = "x"
) -> torch.Tensor:
    """A batch of images: a dense float tensor ``[B, C, H, W]``, B > 0, finite, in [0, 1]; with ``channels``
    and ``size`` (None: any), C must equal ``channels`` and H x W must be ``size`` x ``size``. Returns ``x``."""
    check_dense(x, name)
    if x.dim() != 4:
        raise InputError(f"expected images of shape [B, C, H, W] (rank 4), got rank {x.dim()} {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise InputError(f"empty batch: {name} has 0 images")
    check_channels(x.shape[1], channels, tuple(x.shape))
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise InputError(f"the model takes {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}")
    values = x.detach()
    if not bool(torch.isfinite(values).all()):
        raise InputError("images contain NaN or Inf")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"image values must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return x


def check_dense(x: object, name: str = "x") -> torch.Tensor:
    """A tensor with values: dense (strided) and not on the meta device."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise InputError(f"expected a dense (strided) tensor of images, got layout {x.layout}; use .to_dense()")
    if x.is_meta:
        raise InputError(f"{name} is on the meta device and holds no values; pass images on 'cpu' or 'cuda'")
    return x


def check_channels(have: int, want: int | None, shape: tuple[int, ...]) -> None:
    """Refuse ``have`` channels for a model that takes ``want`` (None: any)."""
    if want is not None and have != want:
        raise InputError(f"the model takes {plural(want, 'channel')}, got {have} (shape {shape})")


def check_labels(y: object, n: int, *, classes: int | None = None, name: str = "y") -> torch.Tensor:
    """``n`` class labels: an int64 tensor ``[n]``, each in ``[0, classes)`` when ``classes`` is given."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (n,):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"{name} must hold one int64 label per image ({n}), got {got}")
    if classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(f"{name}: labels must be in [0, {classes - 1}], got range [{int(y.min())}, {int(y.max())}]")
    return y


def check_norm(norm: object, name: str = "norm") -> str:
    """One of :data:`NORMS`."""
    if norm not in NORMS:
        raise InputError(f"{name} must be one of {', '.join(NORMS)}, got {norm!r}")
    return str(norm)


def check_eps(eps: object, *, finite: bool = True, name: str = "eps") -> float:
    """A perturbation budget: a real number >= 0 (``inf`` allowed unless ``finite``), as a float."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or math.isnan(eps) or eps < 0:
        raise InputError(f"{name} must be a number >= 0, got {eps!r}")
    if finite and math.isinf(eps):
        raise InputError(f"{name} must be finite, got {eps!r}")
    return float(eps)


def check_count(value: object, name: str) -> int:
    """A count such as a batch size, a number of steps or draws: an integer >= 1 (not a bool), as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
