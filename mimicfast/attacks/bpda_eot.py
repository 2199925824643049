"""BPDA + EOT through a stochastic purifier given as ``(x, seed) -> P(x)`` (Athalye et al. 2018).

Kept for callers that hold a purifier function rather than a differentiable model: it builds the BPDA model
``u -> classifier(u + stop_gradient(P(u) - u))`` (forward ``f(P(u))``, backward the identity through P) and runs
:func:`mimicfast.attacks.projected_gradient.pgd` on it. With a :class:`mimicfast.Purifier`, prefer
``pgd(nn.Sequential(Purifier(..., grad="bpda", seed=None), classifier), ...)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from mimicfast.attacks.projected_gradient import pgd

# Seed stride between purifier calls: call c (0, 1, ...) uses base seed ``seed + (1 + c) * stride``; per-image
# seeds are ``base + i``, so calls never share seeds for batches below this size, nor with the defense's small
# evaluation seeds.
_SEED_STRIDE = 100_003


def purifier_fn(model, **purify_kwargs) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``(x, seed) -> mimicfast.Purifier(model, **purify_kwargs)(x, seed=seed)``; e.g. ``preset``, ``steps``.

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
        eot: purifier draws averaged per step (and per candidate when choosing the returned iterate).
        step_size: ``alpha``; default ``2.5 * eps / steps``.
        seed: seeds the random start; purifier call c uses base seed ``seed + (1 + c) * 100003``.
        progress: show a tqdm bar over the steps.

    Returns:
        x_adv [B, C, H, W] within the eps-ball, in [0, 1], without gradient.
    """
    calls = itertools.count()

    def bpda_model(u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            purified = purify(u.detach(), seed + (1 + next(calls)) * _SEED_STRIDE)
        return classifier(u + (purified - u).detach())

    return pgd(bpda_model, x, y, eps=eps, steps=steps, eot=eot, seeds=seed, step_size=step_size, progress=progress)
