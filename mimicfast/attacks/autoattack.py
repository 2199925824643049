"""AutoAttack's ``rand`` protocol for randomized defenses (Croce & Hein 2020): APGD-CE, then APGD-DLR,
each with EOT over 20 calls of the model per iteration, keeping for each image the stronger result.

Differences from the reference (github fra31/auto-attack, ``version="rand"``): "stronger" is decided by each run's
success rate over fresh calls of the model (:func:`mimicfast.attacks.autopgd.apgd_with_success`), not by one call,
and APGD-DLR skips only the images APGD-CE fooled on *every* one of those fresh calls (DLR could not beat them),
not every image one call misclassified; the reference also re-checks its final accuracy with one call per image.
Skipping needs a model that can be restricted to some rows of the batch with the draws those rows would get in a
whole-batch call (:func:`mimicfast.attacks.checks.rows_of`); any other model has every image attacked by both.
The result is the same either way (bitwise where the model's rows do not interact, else up to the rounding of
batched kernels). Each APGD run follows this package's APGD (:mod:`mimicfast.attacks.autopgd`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mimicfast.attacks.autopgd import APGDOptions, apgd_calls, apgd_with_success
from mimicfast.attacks.checks import Model, Seeds, check_batch, rows_of
from mimicfast.attacks.projection import rows_like
from mimicfast.errors import InputError
from mimicfast.seeding import expand_seeds


def aa_rand(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    eot: int = 20,
    seeds: Seeds = 0,
    progress: bool = False,
    **options: object,
) -> torch.Tensor:
    """APGD-CE then APGD-DLR (both ``steps`` iterations, ``eot`` calls per iteration, ``restarts`` runs).

    Args:
        model: ``x [B, C, H, W] in [0, 1] -> logits [B, K >= 3]``, differentiable, possibly stochastic.
        x: clean images ``[B, C, H, W]`` in [0, 1], float.
        y: true labels ``[B]``, int64.
        eps: radius of the threat model in [0, 1] pixel units.
        norm: ``"Linf"`` or ``"L2"``.
        steps: APGD iterations per run (AutoAttack: 100).
        eot: calls of ``model`` averaged per iteration (AutoAttack ``rand``: 20).
        seeds: seed of the random starts: an int ``s`` (image i uses ``s + i``) or one int per image; both runs
            start from the same points.
        progress: tqdm bars over each APGD run's iterations.
        **options: other fields of :class:`mimicfast.attacks.autopgd.APGDOptions` (``restarts``, AutoAttack
            ``rand``: 1; ``select_draws``; ``eot_grad``; ...) except ``loss``.

    Returns:
        ``x_adv``, like ``x``, detached, within ``eps`` of ``x`` in ``norm`` and in [0, 1]: per image the APGD-CE
        result unless APGD-DLR's scored a strictly higher success rate. Calls ``model`` :func:`aa_rand_calls`
        times on the whole batch, or, for a model that can be restricted to rows, APGD-CE's calls on the whole
        batch and APGD-DLR's on the images APGD-CE did not fool on every fresh call.
    """
    if "loss" in options:
        raise InputError("aa-rand runs both losses; it takes no loss=")
    ce = APGDOptions(eps=eps, norm=norm, steps=steps, eot=eot, loss="ce", **options)  # type: ignore[arg-type]
    dlr = replace(ce, loss="dlr")
    check_batch(x, y)
    per_image = expand_seeds(seeds, x.shape[0])
    x_ce, success_ce = apgd_with_success(model, x, y, ce, seeds=per_image, progress=progress)
    # A host sync between the two runs (not in a sampling loop): which images DLR still has to attack.
    left = (success_ce < 1).nonzero().flatten().tolist()
    restricted = rows_of(model, left) if len(left) < x.shape[0] else None
    if restricted is None:  # a model that cannot be restricted: DLR attacks every image
        left, restricted = list(range(x.shape[0])), model
    out = x_ce.clone()
    if left:
        x_dlr, success_dlr = apgd_with_success(restricted, x[left], y[left], dlr,
                                               seeds=[per_image[i] for i in left], progress=progress)
        out[left] = torch.where(rows_like(success_dlr > success_ce[left], x_dlr), x_dlr, x_ce[left])
    return out


def aa_rand_calls(
    *, steps: int = 100, eot: int = 20, restarts: int = 1, select_draws: int | None = None, **_: object
) -> int:
    """How many times :func:`aa_rand` calls ``model``: twice :func:`mimicfast.attacks.autopgd.apgd_calls`."""
    return 2 * apgd_calls(steps=steps, eot=eot, restarts=restarts, select_draws=select_draws)
