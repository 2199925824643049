"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1), Linf and L2, CE or DLR loss, with EOT, following the authors' reference
implementation (github fra31/auto-attack, ``autoattack/autopgd_base.py``) where it differs from the paper.

One run, per image, with ``N = steps`` and ``f`` the EOT mean of the loss over ``eot`` calls of ``model``:

    x(0)   = clip_[0,1](x + delta),  delta a random point on the edge of the ball (:func:`random_start`)
    x(1)   = P(x(0) + eta * dir(g(x(0)))),                  eta = 2 * eps   (Linf and L2)
    z(k+1) = P(x(k) + eta * dir(g(x(k))))
    x(k+1) = P(x(k) + a * (z(k+1) - x(k)) + (1 - a) * (x(k) - x(k-1))),        a = 0.75 (momentum)

``P`` maps into the threat model (:func:`mimicfast.attacks.projection.project`), ``dir`` is ``sign`` (Linf) or
``g / ||g||_2`` (L2), ``g`` the EOT gradient (default: of the mean loss, :func:`mimicfast.attacks.eot.eot_gradient`).
``x_max`` is the iterate with the highest ``f`` so far. At each checkpoint ``w_j`` (:func:`apgd_checkpoints`: the
reference's intervals ``int(0.22 N)``, each ``int(0.03 N)`` shorter, at least ``int(0.06 N)``, all at least 1) the
step size is halved and the iterate (and its gradient) reset to ``x_max`` (:class:`StepSizeRule`) when

* Condition 1: ``sum_{i = w_{j-1}}^{w_j - 1} 1[f(x(i+1)) > f(x(i))] <= rho * (w_j - w_{j-1})``, rho = 0.75; after
  a reset the first increase is counted against ``f`` of the iterate that was replaced, as in the reference; or
* Condition 2: no halving at ``w_{j-1}`` and ``f_max(w_j) <= f_max(w_{j-1})`` (never at ``w_1``).

Differences from the reference implementation:

* ``f``, ``x_max`` and the success of an iterate are EOT means over all ``eot`` calls (the reference uses the last
  call's loss and prediction); ``eot_grad="normalized"`` is an optional gradient estimator (not the reference's);
* Condition 1 at ``w_1`` counts ``f(x(1)) > f(x(0))`` as Algorithm 1 does (the reference reads a row of its loss
  history not yet written, i.e. compares ``f(x(1))`` with 0);
* every image is attacked to the last step and every restart runs on every image (the reference only re-attacks
  images not yet misclassified once): ``model`` is called on the whole batch a fixed number of times;
* the returned iterate is chosen per image from (highest EOT success rate, ``x_max``, last iterate) by fresh calls
  of ``model`` (the reference returns any iterate that one call misclassified, which overstates the success against
  a randomized defense); restarts keep, per image, the run whose choice scored best on those fresh calls;
* the random start draws from one generator per image (:mod:`mimicfast.attacks.random_start`), image i from
  ``seed + i``; the reference draws the batch from torch's global generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mimicfast.attacks.checks import Model, Seeds, check_batch, check_budget
from mimicfast.attacks.eot import check_eot_grad, eot_gradient
from mimicfast.attacks.losses import LOSSES
from mimicfast.attacks.projection import ascent_direction, project, rows_like
from mimicfast.attacks.random_start import STREAM_APGD_START, random_start
from mimicfast.attacks.selection import BestIterates, select_final
from mimicfast.errors import InputError
from mimicfast.seeding import expand_seeds

_CANDIDATES = 3


@dataclass(frozen=True)
class APGDOptions:
    """Settings of an APGD attack (checked on construction; raises InputError).

    Attributes:
        eps: radius of the threat model in [0, 1] pixel units.
        norm: ``"Linf"`` or ``"L2"``.
        steps: iterations per run (``N_iter``; the paper uses 100).
        eot: calls of ``model`` averaged per iteration (AutoAttack's ``rand`` version uses 20).
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (:func:`mimicfast.attacks.losses.dlr_loss`).
        restarts: independent runs from fresh random starts.
        rho: Condition 1's threshold.
        momentum: ``a`` of the update (0.75 in the paper).
        select_draws: fresh calls of ``model`` per candidate when choosing the returned iterate; default ``eot``.
        eot_grad: ``"mean"`` (gradient of the mean loss, the reference's) or ``"normalized"``
            (:func:`mimicfast.attacks.eot.eot_gradient`).
    """

    eps: float
    norm: str = "Linf"
    steps: int = 100
    eot: int = 1
    loss: str = "ce"
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    select_draws: int | None = None
    eot_grad: str = "mean"

    def __post_init__(self) -> None:
        check_budget(eps=self.eps, norm=self.norm, steps=self.steps, eot=self.eot)
        check_eot_grad(self.eot_grad)
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.restarts < 1:
            raise InputError(f"restarts must be >= 1, got {self.restarts}")
        if not (0 < self.rho <= 1 and 0 < self.momentum <= 1):
            raise InputError(f"need 0 < rho <= 1 and 0 < momentum <= 1, got {self.rho}, {self.momentum}")
        if self.select_draws is not None and self.select_draws < 1:
            raise InputError(f"select_draws must be >= 1, got {self.select_draws}")

    @property
    def draws(self) -> int:
        """Fresh calls of ``model`` per candidate when choosing the returned iterate."""
        return self.select_draws or self.eot


def apgd_checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_0 = 0 < w_1 < ... <= steps`` of APGD, as the reference implementation places them.

    The first interval is ``max(int(0.22 steps), 1)`` iterations; each next one is ``max(int(0.03 steps), 1)``
    shorter, but at least ``max(int(0.06 steps), 1)``. For 100 steps ``[0, 22, 41, 57, 70, 80, 87, 93, 99]`` (the
    paper's ``ceil(p_j N)``); for 20 steps ``[0, 4, 7, 9, 10, 11, ..., 20]``.
    """
    interval = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    points = [0]
    while points[-1] + interval <= steps:
        points.append(points[-1] + interval)
        interval = max(interval - shrink, shortest)
    return points


class StepSizeRule:
    """APGD's decision, per image, to halve the step size and restart from the best point (Conditions 1 and 2).

    Fed the loss ``f(x(w)) [B]`` of every iterate ``w = 1 .. steps`` in order (``f0`` is ``f(x(0))``).
    """

    def __init__(self, f0: torch.Tensor, steps: int, rho: float) -> None:
        self.checkpoints = set(apgd_checkpoints(steps)[1:])
        self.rho = rho
        self.f_prev = f0
        self.f_max = f0
        self.increases = torch.zeros_like(f0)
        self.last_checkpoint = 0
        self.f_max_at_last = f0
        # The reference starts as if it had halved at w_0, so Condition 2 cannot fire at w_1.
        self.halved_at_last = torch.ones_like(f0, dtype=torch.bool)

    def update(self, w: int, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Take ``f(x(w))``; returns ``(higher, halve)``: where ``f`` beat every earlier loss (``x(w)`` is the new
        ``x_max``), and at a checkpoint where to halve (else None).

        The loss an increase is counted against is that of the previous iterate as computed, never reset: after a
        restart from ``x_max`` the first comparison is against the iterate that was replaced (as in the reference).
        """
        self.increases = self.increases + (f > self.f_prev).to(self.increases.dtype)
        self.f_prev = f
        higher = f > self.f_max
        self.f_max = torch.where(higher, f, self.f_max)
        if w not in self.checkpoints:
            return higher, None
        stalled = self.increases <= self.rho * (w - self.last_checkpoint)
        no_progress = ~self.halved_at_last & (self.f_max <= self.f_max_at_last)
        halve = stalled | no_progress
        self.halved_at_last, self.f_max_at_last = halve, self.f_max
        self.increases = torch.zeros_like(self.increases)
        self.last_checkpoint = w
        return higher, halve


def _apgd_run(
    model: Model, x: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, opts: APGDOptions, bar: tqdm
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from ``x0``; returns the chosen iterate per image and its success rate over fresh calls."""
    loss_fn = LOSSES[opts.loss]

    def estimate(x_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return eot_gradient(model, x_k, y, loss_fn, opts.eot, eot_grad=opts.eot_grad)

    eta = torch.full((x.shape[0],), 2.0 * opts.eps, device=x.device, dtype=x.dtype)
    grad, f, success = estimate(x0)
    best = BestIterates(x0)
    best.update(x0, f, success)
    rule = StepSizeRule(f, opts.steps, opts.rho)
    x_max, grad_max = x0, grad
    x_prev = x_cur = x0
    for k in range(opts.steps):
        z = project(x_cur + rows_like(eta, x) * ascent_direction(grad, opts.norm), x, opts.eps, opts.norm)
        a = 1.0 if k == 0 else opts.momentum
        x_next = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, opts.eps, opts.norm)
        grad, f, success = estimate(x_next)
        best.update(x_next, f, success)
        higher, halve = rule.update(k + 1, f)
        x_max = torch.where(rows_like(higher, x), x_next, x_max)
        grad_max = torch.where(rows_like(higher, x), grad, grad_max)
        x_prev, x_cur = x_cur, x_next
        if halve is not None:
            eta = torch.where(halve, eta / 2, eta)
            x_cur = torch.where(rows_like(halve, x), x_max, x_cur)
            grad = torch.where(rows_like(halve, x), grad_max, grad)
        bar.update()
    return select_final(model, y, [best.by_success, x_max, x_cur], loss_fn, opts.draws)


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
    **options: object,
) -> torch.Tensor:
    """Untargeted APGD with EOT; keeps, per image, the strongest of ``restarts`` runs.

    Args:
        model: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``, differentiable, possibly stochastic.
        x: clean images ``[B, C, H, W]`` in [0, 1], float.
        y: true labels ``[B]``, int64.
        eps, norm, steps, eot: the budget (:class:`APGDOptions`).
        seeds: seed of the random starts: an int ``s`` (image i uses ``s + i``) or one int per image; restart r
            draws from its own stream.
        progress: show a tqdm bar over ``restarts * steps`` iterations.
        **options: the other fields of :class:`APGDOptions` (``loss``, ``restarts``, ``rho``, ``momentum``,
            ``select_draws``, ``eot_grad``).

    Returns:
        ``x_adv``, like ``x``, detached, within ``eps`` of ``x`` in ``norm`` and in [0, 1]. Calls ``model``
        :func:`apgd_calls` times on the whole batch.
    """
    opts = APGDOptions(eps=eps, norm=norm, steps=steps, eot=eot, **options)  # type: ignore[arg-type]
    return apgd_with_success(model, x, y, opts, seeds=seeds, progress=progress)[0]


def apgd_with_success(
    model: Model, x: torch.Tensor, y: torch.Tensor, opts: APGDOptions, *, seeds: Seeds = 0, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apgd` with its settings in ``opts``, also returning each image's success rate ``[B]`` over the fresh
    calls that chose ``x_adv``."""
    check_batch(x, y)
    x = x.detach()
    per_image = expand_seeds(seeds, x.shape[0])
    best = best_success = None
    total = opts.restarts * opts.steps
    with tqdm(total=total, desc=f"APGD-{opts.loss.upper()}", disable=not progress, leave=False) as bar:
        for r in range(opts.restarts):
            x0 = random_start(x, opts.eps, opts.norm, per_image, (STREAM_APGD_START, r), on_edge=True)
            x_r, success_r = _apgd_run(model, x, y, x0, opts, bar)
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
