"""Carlini-Wagner L2 (Carlini & Wagner 2017, "Towards evaluating the robustness of neural networks"),
untargeted, with EOT averaging for stochastic models.

Change of variables ``x' = (tanh(w) + 1) / 2`` (the box [0, 1] for free), then for a constant ``c`` per image
minimise with Adam over ``w``:

    ||x' - x||_2^2 + c * E[f(x')],   f(x') = max(z_y(x') - max_{i != y} z_i(x'), -kappa)

where the expectation is the mean over ``eot`` calls of ``model`` (EOT). A binary search over ``c`` per image
(``search_steps`` rounds of ``steps`` Adam steps, each round from ``w = atanh(0.999 (2x - 1))``, within 5e-4 of
``x`` per pixel, with a fresh Adam state) looks for the smallest ``c`` that succeeds. A round succeeds for an image
when an iterate had ``z_y + kappa < max_{i != y} z_i`` on at least half of its calls; then ``c`` moves to the
midpoint with the largest failed ``c``, else it is multiplied by 10 until a success brackets it.

``eps`` turns the minimum-norm attack into one for a threat model: an iterate counts only if it lies within
``eps`` of ``x`` in ``norm`` (MimicDiffusion's Table 9 reports C&W L2 with eps 8/255 and EOT 50); ``eps=inf``
accepts any. The result per image is chosen by fresh calls of ``model`` (plain misclassification) from two
candidates: the counted iterate with the highest rate of ``z_y + kappa < max_{i != y} z_i`` over its EOT calls
(ties: the smaller distortion), and the iterate with the lowest EOT mean ``f`` of the whole run mapped into the
eps-ball. So ``x_adv`` is always within ``eps``.

Differences from Carlini & Wagner's reference code: no early abort when the loss stalls (``model`` is called the
same number of times on the whole batch whatever the data), the gradient of ``E[f]`` is an EOT mean, success is
judged on the EOT calls, the start is squashed by 0.999 rather than 1 - 1e-6 and the default learning rate is
0.1 rather than 0.01 (with 1e-6 the background pixels of Fashion-MNIST, at 0, barely move within a few hundred Adam
steps; the reference runs up to 10,000: on 32 bundled images, L2 eps 1.0, 3 rounds of 50 steps left 28% of them
correctly classified with the reference's values, 0% with these), and the returned example is restricted to the eps-ball as above (the
reference returns the smallest successful distortion, or the input if none).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from mimicfast.attacks.checks import Model, Seeds, check_args
from mimicfast.attacks.eot import check_eot_grad, eot_gradient
from mimicfast.attacks.losses import margin
from mimicfast.attacks.projection import lp_norm, project, rows_like
from mimicfast.attacks.selection import select_final
from mimicfast.errors import InputError
from mimicfast.seeding import expand_seeds

_CANDIDATES = 2
_UPPER_UNSET = 1e10  # upper bound of the search before any success (Carlini & Wagner's value)
_TANH_SHRINK = 0.999  # atanh finite at pixels 0 and 1, and not so saturated that Adam needs 1000s of steps


def cw(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = math.inf,
    norm: str = "L2",
    steps: int = 100,
    eot: int = 1,
    seeds: Seeds = 0,
    progress: bool = False,
    search_steps: int = 5,
    initial_const: float = 1.0,
    kappa: float = 0.0,
    lr: float = 0.1,
    select_draws: int | None = None,
    eot_grad: str = "mean",
) -> torch.Tensor:
    """Untargeted Carlini-Wagner L2 with EOT, counted within an eps-ball.

    Args:
        model: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``, differentiable, possibly stochastic.
        x: clean images ``[B, C, H, W]`` in [0, 1], float.
        y: true labels ``[B]``, int64.
        eps: the largest distortion (in ``norm``) that counts as a success; ``inf`` = plain minimum-norm C&W.
        norm: the norm of ``eps`` (the attack always minimises the L2 distortion).
        steps: Adam steps per binary-search round.
        eot: calls of ``model`` averaged per step.
        seeds: accepted for the common signature; C&W draws no randomness of its own.
        progress: show a tqdm bar over ``search_steps * steps``.
        search_steps: rounds of the binary search over ``c``.
        initial_const: ``c`` of the first round.
        kappa: confidence margin of ``f``.
        lr: Adam's learning rate on ``w``.
        select_draws: fresh calls of ``model`` per candidate when choosing the result; default ``eot``.
        eot_grad: ``"mean"`` (the gradient of the mean of ``f``) or ``"normalized"``
            (:func:`mimicfast.attacks.eot.eot_gradient`).

    Returns:
        ``x_adv``, like ``x``, detached, within ``eps`` of ``x`` in ``norm`` and in [0, 1]. Calls ``model``
        :func:`cw_calls` times on the whole batch.
    """
    check_args(x, y, eps=eps, norm=norm, steps=steps, eot=eot, finite=False)
    expand_seeds(seeds, x.shape[0])
    check_eot_grad(eot_grad)
    if search_steps < 1:
        raise InputError(f"search_steps must be >= 1, got {search_steps}")
    if not (initial_const > 0 and kappa >= 0 and lr > 0):
        raise InputError(f"need initial_const > 0, kappa >= 0, lr > 0; got {initial_const}, {kappa}, {lr}")
    x = x.detach()
    b = x.shape[0]

    def hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin(logits, labels).clamp_min(-kappa)

    def confident(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin(logits, labels) < -kappa

    def strength(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -margin(logits, labels)

    c = torch.full((b,), float(initial_const), device=x.device)
    lower = torch.zeros_like(c)
    upper = torch.full_like(c, _UPPER_UNSET)
    w0 = torch.atanh((2 * x - 1) * _TANH_SHRINK)
    counted, counted_success = x.clone(), torch.full_like(c, -1.0)
    counted_dist = torch.full_like(c, math.inf)
    strongest, strongest_f = x.clone(), torch.full_like(c, math.inf)
    bar = tqdm(total=search_steps * steps, desc="C&W", disable=not progress, leave=False)
    for _ in range(search_steps):
        w = w0.clone()
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
        succeeded = torch.zeros(b, dtype=torch.bool, device=x.device)
        for t in range(1, steps + 1):
            x_t = (torch.tanh(w) + 1) / 2
            grad_f, f, success = eot_gradient(model, x_t, y, hinge, eot, confident, eot_grad)
            succeeded |= success >= 0.5
            dist = lp_norm(x_t - x, norm)
            inside = dist <= eps
            better = inside & ((success > counted_success) | ((success == counted_success) & (dist < counted_dist)))
            counted = torch.where(rows_like(better, x), x_t, counted)
            counted_success = torch.where(better, success, counted_success)
            counted_dist = torch.where(better, dist, counted_dist)
            lower_f = f < strongest_f
            strongest = torch.where(rows_like(lower_f, x), x_t, strongest)
            strongest_f = torch.where(lower_f, f, strongest_f)
            # d/dx' of ||x' - x||^2 + c f, then through x' = (tanh(w) + 1) / 2.
            grad_w = (2 * (x_t - x) + rows_like(c, x) * grad_f) * (1 - torch.tanh(w) ** 2) / 2
            m = 0.9 * m + 0.1 * grad_w
            v = 0.999 * v + 0.001 * grad_w**2
            w = w - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            bar.update()
        upper = torch.where(succeeded, torch.minimum(upper, c), upper)
        lower = torch.where(succeeded, lower, torch.maximum(lower, c))
        c = torch.where(upper < _UPPER_UNSET, (lower + upper) / 2, c * 10)
    bar.close()
    candidates = [project(counted, x, eps, norm), project(strongest, x, eps, norm)]
    x_adv, _ = select_final(model, y, candidates, strength, select_draws or eot)
    return x_adv


def cw_calls(*, steps: int = 100, eot: int = 1, search_steps: int = 5, select_draws: int | None = None,
             **_: object) -> int:  # fmt: skip
    """How many times :func:`cw` calls ``model``: ``search_steps * steps * eot + 2 * select_draws``."""
    return search_steps * steps * eot + _CANDIDATES * (select_draws or eot)
