"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1), Linf and L2, CE or DLR loss, with EOT gradient averaging.

One run, per image, with ``N = steps`` and ``f`` the EOT mean of the loss over ``eot`` calls of ``model``:

    x(1)   = P(x(0) + eta * dir(grad f(x(0)))),                  eta(0) = 2 * eps   (Linf and L2)
    z(k+1) = P(x(k) + eta * dir(grad f(x(k))))
    x(k+1) = P(x(k) + a * (z(k+1) - x(k)) + (1 - a) * (x(k) - x(k-1))),            a = 0.75 (momentum)

``P`` maps into the threat model (:func:`mimicfast.attacks.common.project`), ``dir`` is ``sign`` (Linf) or
``g / ||g||_2`` (L2). ``x_max`` is the iterate with the highest ``f`` so far. At each checkpoint ``w_j``
(:func:`apgd_checkpoints`) the step size is halved and the iterate reset to ``x_max`` when

* Condition 1: ``sum_{i = w_{j-1}}^{w_j - 1} 1[f(x(i+1)) > f(x(i))] < rho * (w_j - w_{j-1})``, rho = 0.75
  (the loss went up in fewer than 75% of the steps since the last checkpoint), or
* Condition 2: ``eta(w_{j-1}) == eta(w_j)`` and ``f_max(w_{j-1}) == f_max(w_j)`` (no halving at the last
  checkpoint and no progress since).

Differences from the reference implementation (github fra31/auto-attack, ``autopgd_base.py``):

* checkpoints are the paper's ``w_j = ceil(p_j * N)`` (computed in exact integer arithmetic); the reference counts
  intervals of ``int(0.22 N)``, shrinking by ``int(0.03 N)`` down to ``int(0.06 N)``;
* Condition 1 uses the paper's strict ``<`` (the reference ``<=``), and Condition 2 can fire at the first
  checkpoint (the reference starts as if it had halved at ``w_0``);
* like the reference, the conditions are checked as soon as ``x(w_j)`` is known and a reset replaces ``x(w_j)``
  (Algorithm 1 as printed checks at ``k = w_j`` and replaces ``x(w_j + 1)``, one iteration later);
* ``f``, ``x_max`` and the success of an iterate are EOT means over all ``eot`` calls (the reference uses the last
  call's loss and prediction);
* every image is attacked to the last step and every restart runs on every image (the reference only re-attacks
  images not yet misclassified once): ``model`` is called on the whole batch a fixed number of times;
* the returned iterate is chosen per image from (highest EOT success rate, ``x_max``, last iterate) by fresh calls
  of ``model`` (the reference returns any iterate that one call misclassified, which overstates the success against
  a randomized defense); restarts keep, per image, the run whose choice scored best on those fresh calls;
* the random start draws from one generator per image (:mod:`mimicfast.attacks.common`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mimicfast.attacks.common import (
    LOSSES,
    STREAM_APGD_START,
    BestIterates,
    Model,
    Seeds,
    ascent_direction,
    check_args,
    eot_gradient,
    image_seeds,
    project,
    random_start,
    rows_like,
    select_final,
)
from mimicfast.errors import InputError

_CANDIDATES = 3


def apgd_checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_0 = 0 < w_1 < ...`` of APGD for ``steps`` iterations (Croce & Hein 2020).

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``; duplicates (small ``steps``) dropped.
    The ``p_j`` are kept in hundredths (integers), so no rounding error moves a checkpoint: for 100 steps
    ``[0, 22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    hundredths = [0, 22]
    while True:
        nxt = hundredths[-1] + max(hundredths[-1] - hundredths[-2] - 3, 6)
        if nxt > 100:
            break
        hundredths.append(nxt)
    return sorted({-(-p * steps // 100) for p in hundredths})


def _apgd_run(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    x0: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    eot: int,
    loss_name: str,
    rho: float,
    momentum: float,
    select_draws: int,
    bar: tqdm,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from ``x0``; returns the chosen iterate per image and its success rate over fresh calls."""
    loss_fn = LOSSES[loss_name]
    b = x.shape[0]
    checkpoints = set(apgd_checkpoints(steps)[1:])
    eta = torch.full((b,), 2.0 * eps, device=x.device, dtype=x.dtype)

    grad, f, success = eot_gradient(model, x0, y, loss_fn, eot)
    best = BestIterates(x0)
    best.update(x0, f, success)
    x_max, f_max, grad_max = x0, f, grad
    x_prev = x_cur = x0
    f_cur, grad_cur = f, grad
    increases = torch.zeros(b, device=x.device)
    last_checkpoint = 0
    f_max_at_last = f_max
    halved_at_last = torch.zeros(b, dtype=torch.bool, device=x.device)
    for k in range(steps):
        z = project(x_cur + rows_like(eta, x) * ascent_direction(grad_cur, norm), x, eps, norm)
        if k == 0:
            x_next = z
        else:
            x_next = project(x_cur + momentum * (z - x_cur) + (1 - momentum) * (x_cur - x_prev), x, eps, norm)
        grad, f, success = eot_gradient(model, x_next, y, loss_fn, eot)
        best.update(x_next, f, success)
        increases += (f > f_cur).float()
        higher = f > f_max
        x_max = torch.where(rows_like(higher, x), x_next, x_max)
        grad_max = torch.where(rows_like(higher, x), grad, grad_max)
        f_max = torch.where(higher, f, f_max)
        x_prev, x_cur, f_cur, grad_cur = x_cur, x_next, f, grad
        w = k + 1
        if w in checkpoints:
            stalled = increases < rho * (w - last_checkpoint)
            no_progress = ~halved_at_last & (f_max <= f_max_at_last)
            halve = stalled | no_progress
            eta = torch.where(halve, eta / 2, eta)
            x_cur = torch.where(rows_like(halve, x), x_max, x_cur)
            f_cur = torch.where(halve, f_max, f_cur)
            grad_cur = torch.where(rows_like(halve, x), grad_max, grad_cur)
            halved_at_last, f_max_at_last = halve, f_max
            increases = torch.zeros_like(increases)
            last_checkpoint = w
        bar.update()
    return select_final(model, y, [best.by_success, x_max, x_cur], loss_fn, select_draws)


def apgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    eot: int = 1,
    seeds: Seeds = 0,
    progress: bool = False,
    loss: str = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    select_draws: int | None = None,
) -> torch.Tensor:
    """Untargeted APGD with EOT; keeps, per image, the strongest of ``restarts`` runs.

    Args:
        model: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``, differentiable, possibly stochastic.
        x: clean images ``[B, C, H, W]`` in [0, 1], float.
        y: true labels ``[B]``, int64.
        eps: radius of the threat model in [0, 1] pixel units.
        norm: ``"Linf"`` or ``"L2"``.
        steps: iterations per run (``N_iter``; the paper uses 100).
        eot: calls of ``model`` averaged per iteration (AutoAttack's ``rand`` version uses 20).
        seeds: seed of the random starts: an int (every image) or one int per image; restart r draws from
            its own stream.
        progress: show a tqdm bar over ``restarts * steps`` iterations.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (:func:`mimicfast.attacks.common.dlr_loss`).
        restarts: independent runs from fresh random starts.
        rho: Condition 1's threshold.
        momentum: ``a`` of the update (0.75 in the paper).
        select_draws: fresh calls of ``model`` per candidate when choosing the returned iterate; default ``eot``.

    Returns:
        ``x_adv``, like ``x``, detached, within ``eps`` of ``x`` in ``norm`` and in [0, 1]. Calls ``model``
        :func:`apgd_calls` times on the whole batch.
    """
    x_adv, _ = apgd_with_success(
        model, x, y, eps=eps, norm=norm, steps=steps, eot=eot, seeds=seeds, progress=progress, loss=loss,
        restarts=restarts, rho=rho, momentum=momentum, select_draws=select_draws,
    )  # fmt: skip
    return x_adv


def apgd_with_success(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    eot: int = 1,
    seeds: Seeds = 0,
    progress: bool = False,
    loss: str = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    select_draws: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apgd`, also returning each image's success rate ``[B]`` over the fresh calls that chose ``x_adv``."""
    check_args(x, y, eps=eps, norm=norm, steps=steps, eot=eot)
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    if restarts < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    x = x.detach()
    per_image = image_seeds(seeds, x.shape[0])
    best = best_success = None
    with tqdm(total=restarts * steps, desc=f"APGD-{loss.upper()}", disable=not progress, leave=False) as bar:
        for r in range(restarts):
            x0 = random_start(x, eps, norm, per_image, (STREAM_APGD_START, r))
            x_r, success_r = _apgd_run(
                model, x, y, x0, eps=eps, norm=norm, steps=steps, eot=eot, loss_name=loss, rho=rho,
                momentum=momentum, select_draws=select_draws or eot, bar=bar,
            )  # fmt: skip
            if best is None:
                best, best_success = x_r, success_r
                continue
            better = success_r > best_success
            best = torch.where(rows_like(better, x), x_r, best)
            best_success = torch.where(better, success_r, best_success)
    return best, best_success


def apgd_calls(
    *, steps: int = 100, eot: int = 1, restarts: int = 1, select_draws: int | None = None, **_: object
) -> int:
    """How many times :func:`apgd` calls ``model``: ``restarts * ((steps + 1) * eot + 3 * select_draws)``."""
    return restarts * ((steps + 1) * eot + _CANDIDATES * (select_draws or eot))
