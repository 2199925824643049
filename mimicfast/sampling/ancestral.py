"""The eager reverse loop: :func:`reverse_step` for each step, from pure noise down to sigma = 0.

The loop only walks the index and draws the noise; the arithmetic of a step lives once, in
:mod:`mimicfast.sampling.step`, which the fast path (:class:`mimicfast.fast.FastLoop`) runs too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from mimicfast.sampling.denoisers import Denoiser
from mimicfast.sampling.step import Guidance, StepCoefficients, reverse_step, uses_learned_variance


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: Callable[[], torch.Tensor],
    eta: float = 1.0,
    guidance: Guidance | None = None,
    learned_variance: bool = False,
    clip_denoised: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling from ``x`` at ``sigmas[0]`` down to ``sigmas[-1] = 0``.

    Args:
        denoiser: ``D(x, sigma)``.
        x: [B, C, H, W] start sample in sigma space (``x0 + sigmas[0] * n``).
        sigmas: descending noise levels, [T + 1], last entry 0 (``denoiser.sigmas(steps, spacing)``).
        noise: returns a fresh standard normal tensor shaped like ``x`` at each call; called once per step
            (the last step's draw is multiplied out).
        eta: 1 = DDPM, 0 = DDIM.
        guidance: optional guidance term (e.g. :class:`mimicfast.sampling.guidance.MimicGuidance`); its target
            ``guidance.y`` is the step's ``y``.
        learned_variance: use the denoiser's learned variance (only with ``eta == 1``).
        clip_denoised: clamp x0_hat to [-1, 1] before the update.
        callback: called as ``callback(i, x_next, x0_hat)`` after each step.
        progress: show a tqdm bar.

    Returns:
        x at sigma = 0, [B, C, H, W].
    """
    learned = uses_learned_variance(denoiser, learned_variance, eta)
    coef = StepCoefficients.build(sigmas, eta, device=x.device, dtype=x.dtype)
    n = len(sigmas) - 1
    index = torch.arange(n, device=x.device)  # step i reads index[i : i + 1]: a view, no host-to-device copy
    y = None if guidance is None else guidance.y
    for i in tqdm(range(n), disable=not progress, desc="purify", leave=False):
        guided = guidance is not None and guidance.active[i]
        x, x0 = reverse_step(
            denoiser, x, y, index[i : i + 1], noise(), coef, guidance=guidance if guided else None,
            learned_variance=learned, clip_denoised=clip_denoised,
        )  # fmt: skip
        if callback is not None:
            callback(i, x, x0)
    return x
