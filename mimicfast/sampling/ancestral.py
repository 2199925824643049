"""One ancestral sampler in sigma space, with the guidance as a pluggable term.

With ``eta = 1`` a step is exactly the DDPM posterior step with fixed small variance (Ho et al. 2020,
Eq. 6-7); ``eta = 0`` is DDIM. Models with learned variance (guided-diffusion ``learn_sigma``) keep the
posterior mean and take the variance ``exp(frac log beta_t + (1 - frac) log beta~_t)``, ``frac = (v + 1)/2``
(Nichol & Dhariwal 2021, Eq. 15). Step coefficients are precomputed on the device; the loop has no host
sync and no Python branch on tensor values (DESIGN.md §3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from mimicfast.sampling.denoisers import Denoiser


@dataclass(frozen=True)
class StepCoefficients:
    """Per-step coefficients of the ancestral update, each of shape [T] on the sampling device.

    For step i from ``sigma[i]`` to ``sigma_next[i]``:
    ``x_next = x0 + sigma_down * (x - x0) / sigma + std * z``, with ``std = sigma_up`` (fixed variance) or
    ``exp(0.5 * (frac * log_beta + (1 - frac) * log_posterior_var)) * inv_sqrt_abar_next`` (learned).
    """

    sigma: torch.Tensor
    sigma_next: torch.Tensor
    sigma_down: torch.Tensor
    sigma_up: torch.Tensor
    log_beta: torch.Tensor
    log_posterior_var: torch.Tensor
    inv_sqrt_abar_next: torch.Tensor

    @classmethod
    def build(cls, sigmas: torch.Tensor, eta: float, *, device, dtype) -> StepCoefficients:
        """Coefficients for a descending sigma grid ``sigmas`` ([T + 1], last entry 0), computed in float64."""
        s = sigmas.to(torch.float64)
        cur, nxt = s[:-1], s[1:]
        sigma_up = torch.minimum(nxt, eta * (nxt**2 * (cur**2 - nxt**2) / cur**2).clamp(min=0).sqrt())
        sigma_down = (nxt**2 - sigma_up**2).clamp(min=0).sqrt()
        abar, abar_next = 1 / (1 + cur**2), 1 / (1 + nxt**2)
        beta = 1 - abar / abar_next
        posterior_var = beta * (1 - abar_next) / (1 - abar)
        tiny = torch.finfo(torch.float64).tiny  # the last step adds no noise; keep its logs finite
        fields = dict(
            sigma=cur,
            sigma_next=nxt,
            sigma_down=sigma_down,
            sigma_up=sigma_up,
            log_beta=beta.clamp(min=tiny).log(),
            log_posterior_var=posterior_var.clamp(min=tiny).log(),
            inv_sqrt_abar_next=abar_next.rsqrt(),
        )
        return cls(**{k: v.to(device=device, dtype=dtype) for k, v in fields.items()})


class Guidance(Protocol):
    """A guidance term: ``active[i]`` says (statically) whether step i is guided; ``step`` returns the
    denoiser output and the sigma-space correction to add to ``x_next``."""

    active: list[bool]

    def step(
        self, denoiser: Denoiser, x: torch.Tensor, i: int, learned_variance: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]: ...


def denoise(
    denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, learned_variance: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x0_hat, v)`` for a batch at one noise level; ``v`` is None unless learned variance is used."""
    sigma = sigma.expand(x.shape[0])
    if learned_variance:
        return denoiser.denoise_with_variance(x, sigma)
    return denoiser(x, sigma), None


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
        sigmas: descending noise levels, [T + 1], last entry 0.
        noise: returns a fresh standard normal tensor shaped like ``x`` at each call.
        eta: 1 = DDPM, 0 = DDIM.
        guidance: optional guidance term (e.g. :class:`mimicfast.sampling.guidance.MimicGuidance`).
        learned_variance: use the denoiser's learned variance (only with ``eta == 1``).
        clip_denoised: clamp x0_hat to [-1, 1] before the update.
        callback: called as ``callback(i, x_next, x0_hat)`` after each step.
        progress: show a tqdm bar.

    Returns:
        x at sigma = 0, [B, C, H, W].
    """
    learned = learned_variance and denoiser.learned_variance and eta == 1.0
    coef = StepCoefficients.build(sigmas, eta, device=x.device, dtype=x.dtype)
    n = len(sigmas) - 1
    for i in tqdm(range(n), disable=not progress, desc="purify", leave=False):
        if guidance is not None and guidance.active[i]:
            x0, v, delta = guidance.step(denoiser, x, i, learned)
        else:
            with torch.no_grad():
                x0, v = denoise(denoiser, x, coef.sigma[i], learned)
            delta = None
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        x = x0 + (x - x0) * (coef.sigma_down[i] / coef.sigma[i])
        if i < n - 1:  # the last step lands on sigma = 0 and adds no noise
            if learned:
                frac = (v + 1) / 2
                log_var = frac * coef.log_beta[i] + (1 - frac) * coef.log_posterior_var[i]
                std = (0.5 * log_var).exp() * coef.inv_sqrt_abar_next[i]
            else:
                std = coef.sigma_up[i]
            x = x + std * noise()
        if delta is not None:
            x = x + delta
        if callback is not None:
            callback(i, x, x0)
    return x
