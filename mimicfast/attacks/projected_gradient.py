"""PGD-Linf with a random start (Madry et al. 2018) against a differentiable classifier.

``x_{k+1} = Proj_{B_inf(x, eps) ∩ [0,1]}(x_k + alpha * sign(grad_x CE(f(x_k), y)))``, started from a uniform
draw in the eps-ball. Images are in [0, 1] (the purifier's and the bundled classifier's input space).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimicfast.errors import InputError


def check_attack_args(x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> None:
    """Validate the arguments every attack shares."""
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"x must be a float tensor [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise InputError(f"y must hold one label per image ({x.shape[0]}), got shape {tuple(y.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError("x must be in [0, 1]")
    if not eps >= 0:
        raise InputError(f"eps must be >= 0, got {eps}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")


def random_start(x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """``x + U(-eps, eps)`` clipped to [0, 1], drawn from a CPU generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    delta = (torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 - 1) * eps
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(0, 1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto the Linf ball of radius ``eps`` around ``x``, intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def pgd_linf(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 20,
    *,
    step_size: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Untargeted PGD-Linf on the cross-entropy loss.

    Args:
        classifier: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``, differentiable (e.g. the bundled CNN).
        x: clean images [B, C, H, W] in [0, 1].
        y: true labels [B] (int64).
        eps: Linf radius in [0, 1] pixel units (e.g. 0.1 for Fashion-MNIST).
        steps: gradient steps.
        step_size: ``alpha``; default ``2.5 * eps / steps`` (Madry et al.'s rule of thumb).
        seed: seed of the uniform random start.
        progress: show a tqdm bar.

    Returns:
        x_adv [B, C, H, W] with ``|x_adv - x|_inf <= eps`` and values in [0, 1] (no gradient attached).
    """
    check_attack_args(x, y, eps, steps)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    x_adv = random_start(x, eps, seed)
    for _ in tqdm(range(steps), desc="PGD", disable=not progress, leave=False):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(classifier(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()
