"""Everything becomes a denoiser ``D(x, sigma) -> x0_hat`` in sigma space (k-diffusion style).

``x`` is ``x0 + sigma * n`` (sigma space, docs/DESIGN.md §2); ``sigma`` is a tensor of shape [B] (or a
scalar). Networks reach the sampler through :func:`as_denoiser`, which reads the network's
``denoiser_kind`` class attribute:

* ``"eps_timestep"`` -- guided-diffusion style ``model(x_t, t)`` predicting eps (and, with
  ``learn_sigma``, the variance interpolation ``v`` in the next C channels) for the DDPM schedule;
* ``"x0_sigma"`` -- EDM-precond style ``model(x, sigma)`` that already is a denoiser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from mimicfast.errors import InputError
from mimicfast.schedules import (
    alphas_cumprod,
    linear_betas,
    sigma_grid,
    sigmas_from_alphas_cumprod,
    space_timesteps,
)


class Denoiser(nn.Module):
    """Base class: ``forward(x, sigma) -> x0_hat`` with the same shape and dtype as ``x``.

    Attributes:
        image_size: expected H = W of inputs, or None if any size works.
        channels: expected C, or None.
        learned_variance: True if :meth:`denoise_with_variance` returns the model's variance ``v``.
        guidance_scales: the guidance scales tuned for the model, preset name -> scale (empty: none declared;
            see :func:`mimicfast.presets.default_scale`).
    """

    image_size: int | None = None
    channels: int | None = None
    learned_variance: bool = False
    guidance_scales: Mapping[str, float] = MappingProxyType({})

    def __init__(self, model: object | None = None) -> None:
        """Wrap ``model`` as ``self.model`` and take the guidance scales it declares (None: a subclass that
        computes D itself)."""
        super().__init__()
        if model is not None:
            self.model = model
            self.guidance_scales = dict(getattr(model, "guidance_scales", {}))

    def denoise_with_variance(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x0_hat, v)``; ``v`` in [-1, 1] interpolates the log variance (None without learned variance)."""
        return self(x, sigma), None

    def sigmas(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        """The sampler's noise levels for ``steps`` respaced steps: float64 [steps + 1], descending, last 0 (CPU).

        Every sampler takes its grid from here, so no caller can sample a model on another schedule's noise
        levels. The base class serves continuous-time denoisers (EDM, user callables) with the DDPM linear
        table (docs/DESIGN.md §2); discrete-time models override it with their training table.
        """
        return sigma_grid(space_timesteps(steps, spacing))


def _per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast ``sigma`` (scalar or [B]) to [B] in the dtype and on the device of ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def _checked_output(out: object, x: torch.Tensor, channels: int, *, exact: bool) -> torch.Tensor:
    """The network's output if it is a tensor [B, channels, H, W] for ``x`` [B, C, H, W] (at least ``channels``
    unless ``exact``); else InputError naming it, so a user callable returning the wrong thing fails here with
    a clear message instead of deep inside the sampler."""
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"the denoiser's output must be a tensor shaped like its input {tuple(x.shape)}, got {type(out).__name__}"
        )
    same_layout = out.dim() == x.dim() and out.shape[0] == x.shape[0] and out.shape[2:] == x.shape[2:]
    if not same_layout or (out.shape[1] != channels if exact else out.shape[1] < channels):
        want = (x.shape[0], channels, *x.shape[2:])
        raise InputError(f"the denoiser's output has shape {tuple(out.shape)}, expected {want}")
    return out


class EpsTimestepDenoiser(Denoiser):
    """Wraps an eps-prediction network trained on a discrete schedule (guided-diffusion ``UNetModel``).

    ``D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))``: the input is mapped back to VP
    coordinates ``x_t = sqrt(abar) x~`` and the timestep is found by interpolating ``log sigma`` in the
    training table (exact integers at the table's sigmas, which are the only ones a respaced sampler uses).
    """

    def __init__(self, model: nn.Module, betas: torch.Tensor | None = None) -> None:
        super().__init__(model)
        betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        self.register_buffer("train_sigmas", sigmas_from_alphas_cumprod(alphas_cumprod(betas)), persistent=False)
        self.image_size = getattr(model, "image_size", None)
        self.channels = getattr(model, "in_channels", None)
        self.learned_variance = bool(getattr(model, "learn_sigma", False))

    def sigmas(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        """The respaced grid read from the model's own training table ``train_sigmas`` (any length)."""
        return sigma_grid(space_timesteps(steps, spacing, self.train_sigmas.numel()), self.train_sigmas)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional training timestep of each sigma (linear in log sigma between table entries)."""
        log_table = self.train_sigmas.to(sigma.dtype).log()
        log_sigma = sigma.log()
        low = (log_sigma[None, :] >= log_table[:, None]).sum(0).sub(1).clamp(0, log_table.numel() - 2)
        log_low, log_high = log_table[low], log_table[low + 1]
        w = ((log_low - log_sigma) / (log_low - log_high)).clamp(0, 1)
        return (1 - w) * low.to(sigma.dtype) + w * (low + 1).to(sigma.dtype)

    def denoise_with_variance(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        sigma = _per_sample(sigma, x)
        c_in = _bcast((1 + sigma**2).rsqrt(), x)
        c = x.shape[1]
        out = self.model(x * c_in, self.sigma_to_t(sigma))
        out = _checked_output(out, x, 2 * c if self.learned_variance else c, exact=False).to(x.dtype)
        eps = out[:, :c]
        v = out[:, c : 2 * c] if self.learned_variance else None
        return x - _bcast(sigma, x) * eps, v

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma)[0]


class SigmaDenoiser(Denoiser):
    """Wraps a network that already is ``D(x, sigma)`` (EDM preconditioners, user denoisers)."""

    def __init__(self, model: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__(model)
        self.image_size = getattr(model, "img_resolution", getattr(model, "image_size", None))
        self.channels = getattr(model, "img_channels", getattr(model, "channels", None))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return _checked_output(self.model(x, _per_sample(sigma, x)), x, x.shape[1], exact=True).to(x.dtype)


def as_denoiser(model: nn.Module | Callable, betas: torch.Tensor | None = None) -> Denoiser:
    """Wrap a network from :mod:`mimicfast.models` (or any ``D(x, sigma)`` callable) as a :class:`Denoiser`.

    ``betas`` overrides the DDPM linear schedule of eps-prediction models (default: the model's own
    ``betas`` attribute if it has one, else linear 1e-4..0.02 over 1000 steps).
    """
    if isinstance(model, Denoiser):
        return model
    kind = getattr(model, "denoiser_kind", None)
    if kind == "eps_timestep":
        return EpsTimestepDenoiser(model, betas if betas is not None else getattr(model, "betas", None))
    if kind == "x0_sigma" or (kind is None and callable(model)):
        return SigmaDenoiser(model)
    raise InputError(
        f"cannot use {type(model).__name__} as a denoiser: expected a mimicfast model, a Denoiser, "
        "or a callable D(x, sigma)"
    )
