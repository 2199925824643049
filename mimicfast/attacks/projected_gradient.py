"""PGD with EOT (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks"), Linf and L2.

Untargeted, on the cross-entropy loss, from a random start in the threat model:

    g_k     = (1 / eot) * sum_j grad_x CE(model_j(x_k), y)          (EOT: one fresh call of model per j)
    x_{k+1} = Proj_{B_p(x, eps) ∩ [0, 1]^d}(x_k + alpha * dir_p(g_k)),  dir_Linf = sign, dir_L2 = g / ||g||_2

Differences from Madry et al.'s reference code: the gradient is averaged over ``eot`` calls of a possibly
stochastic ``model`` (with ``eot = 1`` and a deterministic model it is plain PGD); the random start and the
projection are per image (:mod:`mimicfast.attacks.random_start`, :mod:`mimicfast.attacks.projection`); and instead of the last iterate the attack returns,
per image, the best of three candidates (highest EOT success rate seen, highest EOT loss seen, last iterate)
judged by fresh calls of ``model`` (docs/DESIGN.md §7).

``transfer`` in :data:`mimicfast.attacks.ATTACKS` is this function too: PGD on whatever model it is given
(an evaluation passes the bare classifier and scores the result through the defense).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mimicfast.attacks.checks import Model, Seeds, check_args
from mimicfast.attacks.eot import check_eot_grad, eot_gradient
from mimicfast.attacks.losses import ce_loss
from mimicfast.attacks.projection import ascent_direction, project
from mimicfast.attacks.random_start import STREAM_PGD_START, random_start
from mimicfast.attacks.selection import BestIterates, select_final
from mimicfast.seeding import expand_seeds

_CANDIDATES = 3


def pgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 20,
    eot: int = 1,
    seeds: Seeds = 0,
    progress: bool = False,
    step_size: float | None = None,
    select_draws: int | None = None,
    eot_grad: str = "mean",
) -> torch.Tensor:
    """Untargeted PGD-EOT on the cross-entropy loss.

    Args:
        model: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``, differentiable (a classifier, or a defended
            classifier such as ``nn.Sequential(mimicfast.Purifier(..., grad="bpda"), classifier)``).
        x: clean images ``[B, C, H, W]`` in [0, 1], float.
        y: true labels ``[B]``, int64.
        eps: radius of the threat model in [0, 1] pixel units (e.g. Linf 0.1 on Fashion-MNIST, L2 0.5 on CIFAR).
        norm: ``"Linf"`` or ``"L2"``.
        steps: gradient steps.
        eot: calls of ``model`` averaged per step (EOT).
        seeds: seed of the random start: an int ``s`` (image i uses ``s + i``) or one int per image.
        progress: show a tqdm bar over the steps.
        step_size: ``alpha``; default ``2.5 * eps / steps`` (enough to cross the ball from any start).
        select_draws: fresh calls of ``model`` per candidate when choosing the returned iterate; default ``eot``.
        eot_grad: ``"mean"`` (the gradient of the mean loss) or ``"normalized"``
            (:func:`mimicfast.attacks.eot.eot_gradient`).

    Returns:
        ``x_adv``, like ``x``, detached, within ``eps`` of ``x`` in ``norm`` and in [0, 1]. Calls ``model``
        :func:`pgd_calls` times on the whole batch.
    """
    check_args(x, y, eps=eps, norm=norm, steps=steps, eot=eot)
    check_eot_grad(eot_grad)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    x_k = random_start(x, eps, norm, expand_seeds(seeds, x.shape[0]), (STREAM_PGD_START,))
    best = BestIterates(x_k)
    for _ in tqdm(range(steps), desc="PGD", disable=not progress, leave=False):
        grad, loss, success = eot_gradient(model, x_k, y, ce_loss, eot, eot_grad=eot_grad)
        best.update(x_k, loss, success)
        x_k = project(x_k + alpha * ascent_direction(grad, norm), x, eps, norm)
    x_adv, _ = select_final(model, y, [best.by_success, best.by_loss, x_k], ce_loss, select_draws or eot)
    return x_adv


def pgd_calls(*, steps: int = 20, eot: int = 1, select_draws: int | None = None, **_: object) -> int:
    """How many times :func:`pgd` calls ``model``: ``steps * eot + 3 * select_draws``."""
    return steps * eot + _CANDIDATES * (select_draws or eot)
