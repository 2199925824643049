"""Per-image losses and success tests on logits ``[B, K]`` with labels ``y [B]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimicfast.attacks.checks import LossFn
from mimicfast.errors import InputError


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i != y} z_i`` per image ``[B]`` (negative = misclassified)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy ``-log softmax(z)_y``, shape ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), per image ``[B]``.

    ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...`` the
    sorted logits: invariant to shifting and rescaling the logits. Needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise InputError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmax z != y`` per image ``[B]`` (bool)."""
    return logits.argmax(1) != y


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss}
