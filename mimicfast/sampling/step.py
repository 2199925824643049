"""THE reverse step of the purifier: one ancestral step in sigma space, optionally guided.

Every sampler runs this function: the eager loop (:func:`mimicfast.sampling.ancestral.sample`, hence
:func:`mimicfast.api.purify_batch`), the fast path's static-buffer loop and its CUDA-graph replay
(:class:`mimicfast.fast.FastLoop`), and gradient modes that recompute a step in a backward sweep.

The step is a pure function of ``(x_i, y, i, z_i)``: coefficients are looked up in device tables with the
device index ``i`` (``index_select``: no ``.item()``, no Python branch on a tensor value, so it can be captured
in a CUDA graph, docs/DESIGN.md §3), and the noise ``z_i`` is an argument, so a caller can replay step i with
exactly the noise it drew before. Whether the step is guided is a Python-level choice (``guidance`` or None),
known before the loop starts because the window is static.

With ``eta = 1`` the update is exactly the DDPM posterior step with fixed small variance (Ho et al. 2020,
Eq. 6-7); ``eta = 0`` is DDIM. Models with learned variance (guided-diffusion ``learn_sigma``) keep the
posterior mean and take the variance ``exp(frac log beta_t + (1 - frac) log beta~_t)``, ``frac = (v + 1)/2``
(Nichol & Dhariwal 2021, Eq. 15). The guidance correction is that of :mod:`mimicfast.sampling.guidance`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from mimicfast.sampling.denoisers import Denoiser
from mimicfast.schedules import alpha_bar


@dataclass(frozen=True)
class StepCoefficients:
    """Per-step coefficients of the ancestral update, each of shape [T] on the sampling device.

    For step i from ``sigma[i]`` to ``sigma_next[i]``:
    ``x_next = x0 + sigma_down * (x - x0) / sigma + std * z``, with ``std = sigma_up`` (fixed variance) or
    ``exp(0.5 * (frac * log_beta + (1 - frac) * log_posterior_var)) * inv_sqrt_abar_next`` (learned).
    ``noise_on`` (bool) is False for the last step, which lands on sigma = 0 and adds no noise.
    """

    sigma: torch.Tensor
    sigma_next: torch.Tensor
    sigma_down: torch.Tensor
    sigma_up: torch.Tensor
    log_beta: torch.Tensor
    log_posterior_var: torch.Tensor
    inv_sqrt_abar_next: torch.Tensor
    noise_on: torch.Tensor

    @classmethod
    def build(cls, sigmas: torch.Tensor, eta: float, *, device, dtype) -> StepCoefficients:
        """Coefficients for a descending sigma grid ``sigmas`` ([T + 1], last entry 0), computed in float64."""
        s = sigmas.to(torch.float64)
        cur, nxt = s[:-1], s[1:]
        sigma_up = torch.minimum(nxt, eta * (nxt**2 * (cur**2 - nxt**2) / cur**2).clamp(min=0).sqrt())
        sigma_down = (nxt**2 - sigma_up**2).clamp(min=0).sqrt()
        abar, abar_next = alpha_bar(cur), alpha_bar(nxt)
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
        steps = len(cur)
        noise_on = torch.arange(steps, device=device) < steps - 1
        return cls(**{k: v.to(device=device, dtype=dtype) for k, v in fields.items()}, noise_on=noise_on)


class Guidance(Protocol):
    """A guidance term (:class:`mimicfast.sampling.guidance.MimicGuidance` is the one the purifier uses).

    Attributes:
        active: ``active[i]`` says (statically) whether step i is guided.
        coef: [T] on the device: the step's correction is ``delta = -coef[i] * J^T r``.
        jacobian: ``"vjp"`` (``J = d x0_hat / d x``, one VJP through the denoiser) or ``"constant_eps"`` (J = I).
        y: the guidance target the term was built for (the default ``y`` of :func:`mimicfast.sampling.sample`).
    """

    active: list[bool]
    coef: torch.Tensor
    jacobian: Literal["vjp", "constant_eps"]
    y: torch.Tensor

    def residual(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``r = d loss / d x0_hat`` per sample, [B, C, H, W] in ``x0_hat``'s dtype."""
        ...


def uses_learned_variance(denoiser: Denoiser, requested: bool, eta: float) -> bool:
    """Whether a step takes the model's learned variance: asked for, the model has one, and ``eta == 1`` (the
    learned variance interpolates the DDPM posterior variance, which only the eta = 1 step uses)."""
    return requested and denoiser.learned_variance and eta == 1.0


def denoise(
    denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, learned_variance: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x0_hat, v)`` for a batch at one noise level; ``v`` is None unless learned variance is used."""
    sigma = sigma.expand(x.shape[0])
    if learned_variance:
        return denoiser.denoise_with_variance(x, sigma)
    return denoiser(x, sigma), None


def _guided_denoise(
    denoiser: Denoiser,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: torch.Tensor,
    guidance: Guidance,
    learned_variance: bool,
    differentiable: bool,
    vjp_context: Callable[[], AbstractContextManager],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(x0_hat, v, J^T r)`` of a guided step."""
    if guidance.jacobian == "constant_eps":
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            x0, v = denoise(denoiser, x, sigma, learned_variance)
            return x0, v, guidance.residual(x0, y)  # J = I in sigma space when eps is held constant
    with torch.enable_grad():
        # The VJP needs x in the graph; a differentiable step keeps the caller's graph when x has one.
        xg = x if differentiable and x.requires_grad else x.detach().requires_grad_(True)
        with vjp_context():
            x0, v = denoise(denoiser, xg, sigma, learned_variance)
        r = guidance.residual(x0 if differentiable else x0.detach(), y)
        (jtr,) = torch.autograd.grad(x0, xg, r, create_graph=differentiable)
    if differentiable:
        return x0, v, jtr
    return x0.detach(), None if v is None else v.detach(), jtr


def reverse_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    y: torch.Tensor | None,
    i: torch.Tensor | int,
    noise: torch.Tensor,
    coef: StepCoefficients,
    *,
    guidance: Guidance | None = None,
    learned_variance: bool = False,
    clip_denoised: bool = False,
    differentiable: bool = False,
    vjp_context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step i of the reverse process: ``x_i`` (at ``coef.sigma[i]``) -> ``x_{i+1}`` (at ``coef.sigma_next[i]``).

    ``x_{i+1} = x0 + (x_i - x0) * sigma_down / sigma + where(noise_on, std * z_i, 0) + delta``, with
    ``x0 = D(x_i, sigma)`` (clamped to [-1, 1] with ``clip_denoised``) and, on a guided step,
    ``delta = -guidance.coef[i] * J^T r`` (docs/DESIGN.md §2).

    Args:
        denoiser: ``D(x, sigma)``.
        x: [B, C, H, W] ``x_i`` in sigma space, in the working dtype of ``coef``.
        y: [B, C, H, W] the guidance target (the adversarial images in [-1, 1]); unused when unguided.
        i: the step index (0 = the noisiest step): an int64 [1] tensor on ``x``'s device (read there, never on
            the host; what a captured CUDA graph needs) or a Python int.
        noise: [B, C, H, W] standard normal ``z_i``, in ``x``'s dtype; multiplied out (exactly 0 added) on the
            last step. Passing the same ``z_i`` replays the step exactly.
        coef: the loop's coefficient tables (:meth:`StepCoefficients.build` of ``denoiser.sigmas(...)``).
        guidance: the guidance term for a guided step, None for an unguided one (a static choice).
        learned_variance: use the denoiser's learned variance (callers pass it only with ``eta == 1``).
        clip_denoised: clamp x0_hat to [-1, 1] before the update.
        differentiable: False (sampling): the step records no autograd history and returns detached tensors.
            True: ``x_{i+1}`` carries history to ``x``, ``y`` (through ``guidance.residual``), ``noise`` and the
            network, and the guided VJP is built with ``create_graph=True`` (backpropagating through it is a
            second-order pass through the network), under the caller's grad mode.
        vjp_context: a context manager factory entered around the network call of a guided VJP step (the fast
            path passes :class:`mimicfast.fast.input_only_vjp`).

    Returns:
        ``(x_{i+1}, x0_hat)``, each [B, C, H, W] (``x0_hat`` after clipping).
    """
    if isinstance(i, int):
        i = torch.full((1,), i, dtype=torch.int64, device=x.device)
    sigma = coef.sigma.index_select(0, i)
    if guidance is None:
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            x0, v = denoise(denoiser, x, sigma, learned_variance)
        jtr = None
    else:
        x0, v, jtr = _guided_denoise(
            denoiser, x, y, sigma, guidance, learned_variance, differentiable, vjp_context
        )  # fmt: skip
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        x_next = x0 + (x - x0) * (coef.sigma_down.index_select(0, i) / sigma)
        if learned_variance:
            frac = (v + 1) / 2
            log_var = frac * coef.log_beta.index_select(0, i) + (1 - frac) * coef.log_posterior_var.index_select(0, i)
            std = (0.5 * log_var).exp() * coef.inv_sqrt_abar_next.index_select(0, i)
        else:
            std = coef.sigma_up.index_select(0, i)
        # A mask, not a multiplication by 0: a learned variance that overflows at sigma = 0 must not give NaN.
        x_next = x_next + torch.where(coef.noise_on.index_select(0, i), std * noise, 0.0)
        if jtr is not None:
            x_next = x_next + -guidance.coef.index_select(0, i) * jtr
    return x_next, x0
