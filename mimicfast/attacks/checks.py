"""The argument checks every attack shares (through :mod:`mimicfast.validate`), and the types of its callables.

Conventions (docs/DESIGN.md §7): images are float tensors ``[B, C, H, W]`` in [0, 1]; ``model(x) -> logits
[B, K]`` is any differentiable callable, possibly stochastic (a purifier drawing fresh randomness on every call),
only ever called on the whole batch, in the same row order, a number of times that depends on the attack's
settings and never on the data (so a wrapper can give row i its own defense seeds per call). A model may also
offer ``model.restrict_rows(rows)``: itself restricted to those rows of the batch, each row getting the draws it
would get in a call on the whole batch; only :func:`mimicfast.attacks.aa_rand` uses it, to skip work
(:func:`rows_of`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mimicfast.errors import InputError
from mimicfast.validate import check_count, check_eps, check_images, check_labels, check_norm

Model = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Seeds = int | Sequence[int]


def rows_of(model: Model, rows: list[int]) -> Model | None:
    """``model`` restricted to ``rows`` of the batch (``model.restrict_rows(rows)``, continuing its call count),
    or None when the model does not offer it."""
    restrict = getattr(model, "restrict_rows", None)
    return restrict(rows) if callable(restrict) else None


def check_budget(*, eps: float, norm: str, steps: int, eot: int, finite: bool = True) -> None:
    """Validate an attack's budget (``eps`` may be ``inf`` unless ``finite``) by :mod:`mimicfast.validate`."""
    check_eps(eps, finite=finite)
    check_norm(norm)
    check_count(steps, "steps")
    check_count(eot, "eot")


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Validate the images ``x [B, C, H, W]`` in [0, 1] and their int64 labels ``y [B]``; raises InputError."""
    check_images(x)
    check_labels(y, x.shape[0])


def check_args(
    x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int, eot: int, finite: bool = True
) -> None:
    """:func:`check_batch` and :func:`check_budget`."""
    check_batch(x, y)
    check_budget(eps=eps, norm=norm, steps=steps, eot=eot, finite=finite)


def logits_of(model: Model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as float32 logits, checked to be ``[B, K]``; raises InputError."""
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise InputError(f"model must return logits [B={x.shape[0]}, K], got {getattr(logits, 'shape', logits)!r}")
    return logits.float()
