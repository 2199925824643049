"""BPDA + EOT through a stochastic purifier (Athalye et al. 2018).

The purifier P is not differentiated: BPDA replaces its Jacobian by the identity, so the attack gradient is
``grad_x CE(f(P(x)), y) ~= grad_u CE(f(u), y) at u = P(x)``. EOT averages that gradient over ``eot`` draws of
the purifier's randomness (different sampler seeds), then takes a PGD-Linf sign step:

    g_k = (1/eot) * sum_j grad_u CE(f(u_j), y),   u_j = P(x_k; seed_kj)
    x_{k+1} = Proj_{B_inf(x, eps) ∩ [0,1]}(x_k + alpha * sign(g_k))

The attack seeds are disjoint from the small seeds a defense is evaluated with, so the attacker never sees
the exact noise the defense will use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimicfast.attacks.pgd import check_attack_args, project, random_start
from mimicfast.errors import InputError

# Seed stride between EOT draws: per-sample seeds are ``base + i`` for image i, so draws never share seeds
# for batches below this size.
_SEED_STRIDE = 100_003


def purifier_fn(model, **purify_kwargs) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``(x, seed) -> mimicfast.purify(x, model, seed=seed, **purify_kwargs)``; e.g. ``preset``, ``steps``.

    One :class:`mimicfast.Purifier` serves every call, so on CUDA the attack's many calls replay the graphs
    captured (and use the batch size measured) by the first instead of capturing anew each time.
    """
    from mimicfast.api import Purifier

    purifier = Purifier(model, **purify_kwargs)

    def run(x: torch.Tensor, seed: int) -> torch.Tensor:
        return purifier(x, seed=seed)

    return run


def bpda_eot(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    purify: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    *,
    eot: int = 4,
    step_size: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Untargeted BPDA+EOT PGD-Linf against ``classifier(purify(x))``.

    Args:
        classifier: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``, differentiable.
        purify: ``(x, seed) -> purified x`` in [0, 1], e.g. :func:`purifier_fn` (gradients are not needed).
        x: clean images [B, C, H, W] in [0, 1].
        y: true labels [B].
        eps: Linf radius in [0, 1] pixel units.
        steps: PGD steps; each costs ``eot`` purifications of the batch.
        eot: purifier draws averaged per step.
        step_size: ``alpha``; default ``2.5 * eps / steps``.
        seed: seeds the random start and the purifier draws (draw j of step k uses base seed
            ``seed + (1 + k * eot + j) * 100003``).
        progress: show a tqdm bar over the ``steps * eot`` purifications.

    Returns:
        x_adv [B, C, H, W] within the eps-ball, in [0, 1], without gradient.
    """
    check_attack_args(x, y, eps, steps)
    if eot < 1:
        raise InputError(f"eot must be >= 1, got {eot}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    x_adv = random_start(x, eps, seed)
    bar = tqdm(total=steps * eot, desc="BPDA+EOT", disable=not progress, leave=False)
    for k in range(steps):
        grad = torch.zeros_like(x)
        for j in range(eot):
            with torch.no_grad():
                u = purify(x_adv, seed + (1 + k * eot + j) * _SEED_STRIDE)
            u.requires_grad_(True)
            loss = F.cross_entropy(classifier(u), y, reduction="sum")
            grad += torch.autograd.grad(loss, u)[0]
            bar.update()
        x_adv = project(x_adv + alpha * grad.sign(), x, eps)
    bar.close()
    return x_adv
