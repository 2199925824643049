"""Algorithm 1 of the paper, written literally in its VP coordinates. Plain PyTorch, float64-capable.

This is the spec that the sigma-space sampler (:mod:`mimicfast.sampling`) is tested against. It is
deliberately unfused and unoptimised: the guidance loss is built as the paper writes it and
differentiated by autograd; the reverse step is the DDPM posterior (Ho et al. 2020, Eq. 6-7) or,
for ``eta != 1``, DDIM (Song et al. 2021, Eq. 12).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mimicfast.presets import Preset
from mimicfast.reference.ops import upsample_reference
from mimicfast.upsample_mode import SCALE

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# The visited timesteps and the window are written here again, from their definitions, on purpose: the spec
# shares no code with the sampler it checks.
def visited_timesteps(steps: int, spacing: str, num_train: int) -> list[int]:
    """The training timesteps (ascending, 0-based) of a ``steps``-step reverse process.

    ``uniform``: guided-diffusion's respacing, a stride of ``(num_train - 1) / (steps - 1)`` accumulated from 0
    and rounded. ``released``: the authors' ``seq = range(stride - 1, num_train, stride)``, ``stride = num_train
    // steps``.
    """
    if spacing == "released":
        stride = num_train // steps
        return list(range(stride - 1, num_train, stride))[:steps]
    if steps == 1:
        return [0]
    out, t = [], 0.0
    for _ in range(steps):
        out.append(round(t))
        t += (num_train - 1) / (steps - 1)
    return out


def in_window(k: int, steps: int, window: tuple[float, float] | None) -> bool:
    """Algorithm 1, line 5: the step with counter ``k`` (T down to 1) is guided iff ``e T <= k <= s T``."""
    if window is None:
        return True
    e, s = window
    return e * steps - 1e-9 <= k <= s * steps + 1e-9  # so that 0.11 * 100 = 11.000000000000002 admits k = 11


def _distance(a: torch.Tensor, b: torch.Tensor, preset: Preset) -> torch.Tensor:
    diff = a - b
    return diff.abs().sum() if preset.distance == "l1" else diff.pow(2).sum()


def guidance_loss(x0_hat: torch.Tensor, y: torch.Tensor, preset: Preset) -> torch.Tensor:
    """``||x0_hat - y|| + ||H(x0_hat) - H(y)||`` (Eq. 11 + Eq. 12), summed over the batch.

    ``reduction="mean"`` divides each term by ``reduction_batch`` times its own pixel count, as the released
    code's ``torch.norm(., 1, dim=1).mean()`` does at its batch size.
    """
    h, w = y.shape[-2:]
    total = x0_hat.new_zeros(())
    if preset.long_range:
        long = _distance(x0_hat, y, preset)
        total = total + (long if preset.reduction == "sum" else long / (preset.reduction_batch * h * w))
    if preset.upsample is not None:
        short = _distance(upsample_reference(x0_hat, preset.upsample), upsample_reference(y, preset.upsample), preset)
        pixels = preset.reduction_batch * h * w * SCALE * SCALE
        total = total + (short if preset.reduction == "sum" else short / pixels)
    return total


def guided_factor(abar_t: float, preset: Preset) -> float:
    """R_t (Eq. 14: ``1 / sigma(t)^2`` with the paper's sigma(t) = abar_t), or the released code's rule."""
    if preset.rt == "inverse_abar_sq":
        return preset.scale / abar_t**2
    return preset.scale * math.sqrt(abar_t)


def mimic_diffusion_reference(
    eps_model: EpsModel,
    y: torch.Tensor,
    preset: Preset,
    noise: Callable[[], torch.Tensor],
    *,
    betas: torch.Tensor | None = None,
    learned_variance: bool = False,
) -> torch.Tensor:
    """Purify ``y`` (= x_adv in [-1, 1], [B, C, H, W]) with Algorithm 1.

    Args:
        eps_model: ``eps_model(x_t, t) -> eps`` ([B, C, ...]) or ``[eps, v]`` ([B, 2C, ...]) with learned
            variance; ``t`` is a [B] tensor of training timesteps (0-based).
        y: the adversarial images in model space.
        preset: the method's settings.
        noise: returns standard normal noise shaped like ``y``; called once for x_T, then once per step
            with t > 1, in that order.
        betas: training schedule (default DDPM linear 1e-4..0.02, 1000 steps).
        learned_variance: ``eps_model`` returns ``[eps, v]`` and the preset uses it.

    Returns:
        x_0, [B, C, H, W].
    """
    if betas is None:
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas.to(torch.float64), 0).tolist()
    timesteps = visited_timesteps(preset.steps, preset.spacing, len(abar))
    c = y.shape[1]
    use_learned = learned_variance and preset.learned_variance and preset.eta == 1.0

    x = noise()  # line 2: x_T ~ N(0, I)
    for k in range(preset.steps, 0, -1):  # line 3: t = T, ..., 1
        t = timesteps[k - 1]
        a_t = abar[t]
        a_prev = abar[timesteps[k - 2]] if k > 1 else 1.0
        guided = in_window(k, preset.steps, preset.window)  # line 5
        x_t = x.detach().requires_grad_(guided)

        # line 4: x0_hat (Eq. 3) and x_{t-1} by the reverse process
        with torch.set_grad_enabled(guided):
            out = eps_model(x_t, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))
            eps = out[:, :c]
            if preset.jacobian == "constant_eps":
                eps = eps.detach()
            x0_hat = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        with torch.no_grad():
            x0 = x0_hat.clamp(-1, 1) if preset.clip_denoised else x0_hat
            beta_t = 1 - a_t / a_prev
            posterior_var = beta_t * (1 - a_prev) / (1 - a_t)
            if preset.eta == 1.0:
                mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x0 + (
                    math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)
                ) * x_t
                if use_learned:
                    frac = (out[:, c : 2 * c] + 1) / 2
                    log_var = frac * math.log(beta_t) + (1 - frac) * math.log(max(posterior_var, 1e-300))
                    std = (0.5 * log_var).exp()
                else:
                    std = math.sqrt(posterior_var)
            else:
                sigma_ddim = preset.eta * math.sqrt(posterior_var)
                eps_x0 = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
                mean = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma_ddim**2, 0.0)) * eps_x0
                std = sigma_ddim
            x_prev = mean + std * noise() if k > 1 else mean

        if guided:  # lines 5-8: x_{t-1} <- x_{t-1} + g^l + g^s
            loss = guidance_loss(x0_hat, y, preset)
            (grad,) = torch.autograd.grad(loss, x_t)
            x_prev = x_prev - guided_factor(a_t, preset) * grad
        x = x_prev.detach()
    return x
