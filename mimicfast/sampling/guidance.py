"""MimicDiffusion guidance (paper Eq. 11-14, Algorithm 1 lines 5-8): the correction a guided step adds.

At a guided step the paper adds, in VP coordinates,

    g = -R_t * grad_{x_t} [ ||x0_hat - y||_1 + ||H(x0_hat) - H(y)||_1 ],   y = x_adv,

to x_{t-1}. With ``r`` the guidance residual (:func:`mimicfast.ops.l1_residual`) and ``J = d x0_hat / d x``,
``grad_{x_t} = J^T r / sqrt(abar_t)`` in sigma space (x~ = x_t / sqrt(abar_t)), and adding ``g`` to
x_{t-1} adds ``g / sqrt(abar_{t-1})`` to x~_{t-1}. Hence the sigma-space correction

    delta = -R_t / (sqrt(abar_t) sqrt(abar_{t-1})) * J^T r.

``J^T r`` is one VJP through the denoiser (``jacobian="vjp"``) or ``r`` itself when the predicted noise is
held constant (``"constant_eps"``, the released code); :func:`mimicfast.sampling.step.reverse_step` computes it
from this module's residual and coefficients. Every quantity is per sample.
"""

from __future__ import annotations

import torch

from mimicfast.ops import bicubic_up4, bicubic_up4_adjoint, l1_residual
from mimicfast.presets import Preset
from mimicfast.schedules import alpha_bar, window_mask
from mimicfast.upsample_mode import SCALE, UpsampleMode


def guidance_factor(abar: torch.Tensor, preset: Preset) -> torch.Tensor:
    """R_t of the preset: ``scale / abar_t^2`` (paper Eq. 14) or ``scale * sqrt(abar_t)`` (released code)."""
    if preset.rt == "inverse_abar_sq":
        return preset.scale / abar**2
    return preset.scale * abar.sqrt()


def term_weights(preset: Preset, height: int, width: int) -> tuple[float, float]:
    """Scalar weights (long-range, short-range) of the two loss terms under the preset's reduction.

    ``sum``: the plain norms. ``mean``: the released code's ``torch.norm(., 1, dim=1).mean()``, i.e. each
    term divided by ``reduction_batch`` times its own pixel count (H*W, and 16*H*W after x4 upsampling).
    """
    if preset.reduction == "sum":
        long_w, short_w = 1.0, 1.0
    else:
        pixels = preset.reduction_batch * height * width
        long_w, short_w = 1.0 / pixels, 1.0 / (pixels * SCALE * SCALE)
    return (long_w if preset.long_range else 0.0), (short_w if preset.upsample is not None else 0.0)


def l2_residual(x0_hat: torch.Tensor, y: torch.Tensor, preset: Preset, long_w: float, short_w: float) -> torch.Tensor:
    """Gradient of ``long_w ||d||_2^2 + short_w ||H d||_2^2`` w.r.t. x0_hat (the Table 5 L2 ablation)."""
    d = x0_hat - y
    r = 2 * long_w * d
    mode = UpsampleMode.parse(preset.upsample)
    if mode is UpsampleMode.BICUBIC:
        r = r + 2 * short_w * bicubic_up4_adjoint(bicubic_up4(d))
    elif mode is UpsampleMode.NEAREST:
        r = r + 2 * short_w * (SCALE * SCALE) * d  # nearest x4 copies each pixel 16 times: H^T H = 16 I exactly
    return r


class MimicGuidance:
    """The guidance term of Algorithm 1 for one batch (the :class:`mimicfast.sampling.step.Guidance` of the purifier).

    Args:
        y: [B, C, H, W] the adversarial images in model space [-1, 1] (the default target of the steps).
        preset: the method's settings (window, H, R_t, J mode, reduction, distance).
        sigmas: the sampler's descending sigma grid, [T + 1].

    Attributes:
        active: ``active[i]`` is True iff step i lies in the preset's window.
        coef: [T] ``R_t / (sqrt(abar_t) sqrt(abar_{t-1}))`` in ``y``'s dtype and on its device.
        jacobian: the preset's J mode, ``"vjp"`` or ``"constant_eps"``.
    """

    def __init__(self, y: torch.Tensor, preset: Preset, sigmas: torch.Tensor) -> None:
        self.y = y
        self.preset = preset
        self.jacobian = preset.jacobian
        self.active = window_mask(len(sigmas) - 1, preset.window)
        s = sigmas.to(torch.float64)
        abar, abar_next = alpha_bar(s[:-1]), alpha_bar(s[1:])
        coef = guidance_factor(abar, preset) / (abar.sqrt() * abar_next.sqrt())
        self.coef = coef.to(device=y.device, dtype=y.dtype)
        self.long_w, self.short_w = term_weights(preset, y.shape[-2], y.shape[-1])

    def residual(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d(loss)/d(x0_hat) per sample, [B, C, H, W], for the target ``y``."""
        if self.preset.distance == "l2":
            return l2_residual(x0_hat, y, self.preset, self.long_w, self.short_w)
        upsample = self.preset.upsample if self.short_w else None
        r = l1_residual(x0_hat, y, upsample, long_weight=self.long_w, short_weight=self.short_w)
        return r.to(x0_hat.dtype)
