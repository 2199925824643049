"""Noise schedules: DDPM linear betas, timestep respacing, and the equivalent sigma grid.

VP coordinates (paper): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Sigma space (EDM / k-diffusion):
``x~ = x_t / sqrt(abar_t) = x_0 + sigma_t eps`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (docs/DESIGN.md §2).
All tables are float64; callers cast once, outside the sampling loop.
"""

from __future__ import annotations

from typing import Literal

import torch

from mimicfast.errors import InputError

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule as guided-diffusion computes it (``np.linspace`` in float64), shape [T]."""
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: ``abar(t) = cos((t/T + s) / (1 + s) * pi/2)^2``, betas capped at 0.999."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = torch.cos((t + s) / (1 + s) * torch.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_t = prod_{s <= t} (1 - beta_s)``, float64, shape [T]."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def sigmas_from_alphas_cumprod(abar: torch.Tensor) -> torch.Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)``."""
    return ((1.0 - abar) / abar).sqrt()


def alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """``abar = 1 / (1 + sigma**2)``, the inverse of :func:`sigmas_from_alphas_cumprod`."""
    return 1 / (1 + sigma**2)


def start_scale(sigma_max: torch.Tensor) -> float:
    """``1 / sqrt(abar_T) = sqrt(1 + sigma_max**2)``: x_T ~ N(0, I) in VP coordinates is ``x_T * start_scale``
    in sigma space (x~ = x_t / sqrt(abar_t)), the sampler's start."""
    return float((1 + sigma_max**2).sqrt())


def space_timesteps(
    steps: int, spacing: Literal["uniform", "released"] = "uniform", num_train: int = NUM_TRAIN_TIMESTEPS
) -> list[int]:
    """The ``steps`` training timesteps (ascending, 0-based) that a respaced reverse process visits.

    ``uniform`` follows guided-diffusion's ``space_timesteps(num_train, [steps])``: a fractional stride
    ``(num_train - 1) / (steps - 1)`` from 0, rounded (0, 10, 20, ..., 999 for 100 of 1000).
    ``released`` follows the authors' code: ``k * (num_train // steps) - 1`` for k = 1..steps
    (9, 19, ..., 999 for 100 of 1000); ``steps`` must divide ``num_train``.
    """
    if not 1 <= steps <= num_train:
        raise InputError(f"steps must be in [1, {num_train}], got {steps}")
    if spacing == "uniform":
        if steps == 1:
            return [0]
        stride = (num_train - 1) / (steps - 1)
        taken, cur = [], 0.0
        for _ in range(steps):  # accumulate like guided-diffusion so rounding ties fall the same way
            taken.append(round(cur))
            cur += stride
        return taken
    if spacing == "released":
        if num_train % steps:
            raise InputError(f"'released' spacing needs steps dividing {num_train}, got {steps}")
        stride = num_train // steps
        return [k * stride - 1 for k in range(1, steps + 1)]
    raise InputError(f"unknown spacing {spacing!r}; expected 'uniform' or 'released'")


def sigma_grid(timesteps: list[int], train_sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """Sampler sigmas, descending, for the given (ascending) timesteps, with a final 0 appended: [T + 1].

    ``train_sigmas`` is the model's training table ([1000], default: the DDPM linear schedule's).
    """
    if train_sigmas is None:
        train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod(linear_betas()))
    sig = train_sigmas.to(torch.float64).cpu()[torch.tensor(timesteps)]
    return torch.cat([sig.flip(0), sig.new_zeros(1)])


def window_mask(steps: int, window: tuple[float, float] | None) -> list[bool]:
    """Which sampler steps are guided, in sampling order (index 0 = the first, noisiest step).

    Step i has the paper's counter ``k = steps - i`` (k = T down to 1); it is guided iff
    ``e*T <= k <= s*T`` for ``window = (e, s)`` (Algorithm 1, line 5), or always when ``window`` is None.
    """
    if window is None:
        return [True] * steps
    e, s = window
    # A tolerance keeps 0.11 * 100 = 11.000000000000002 from excluding k = 11.
    lo, hi = e * steps - 1e-9, s * steps + 1e-9
    return [lo <= steps - i <= hi for i in range(steps)]
