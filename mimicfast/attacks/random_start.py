"""The attacks' own randomness: one CPU generator per image and purpose (:func:`mimicfast.seeding.generator`),
never torch's global generator, so ``x_adv[i]`` depends on ``x[i]``, ``y[i]``, image i's seed and the model's
answers on row i only, not on its batch-mates."""

from __future__ import annotations

import torch

from mimicfast.attacks.projection import lp_norm, rows_like
from mimicfast.seeding import generator

# Stream codes: each source of an attack's randomness draws from its own generator per image.
STREAM_PGD_START = 1
STREAM_APGD_START = 2


def per_image_draw(x: torch.Tensor, seeds: list[int], stream: tuple[int, ...], kind: str) -> torch.Tensor:
    """A tensor like ``x`` whose row i is drawn (``"uniform"`` U[0, 1) or ``"normal"``) from image i's generator.

    Drawn in float64 on the CPU, then cast, so the values do not depend on the device or the batch.
    """
    draw = torch.rand if kind == "uniform" else torch.randn
    rows = [draw(x.shape[1:], generator=generator(s, *stream), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device=x.device, dtype=x.dtype)


def random_start(
    x: torch.Tensor, eps: float, norm: str, seeds: list[int], stream: tuple[int, ...], *, on_edge: bool = False
) -> torch.Tensor:
    """A random point of the threat model around ``x``, clipped to [0, 1], from each image's generator.

    Linf: ``delta = eps * t`` with ``t ~ U(-1, 1)`` per pixel (Madry et al. 2018), or with ``on_edge`` ``t``
    divided by its largest ``|t_j|``, so the largest pixel change is exactly ``eps`` (the start of Croce & Hein's
    reference APGD). L2: ``delta = eps * t / ||t||_2``, ``t ~ N(0, I)``: a uniform direction on the sphere of
    radius eps (the start of the reference APGD), whatever ``on_edge``. The clip to [0, 1] comes after.
    """
    if norm == "Linf":
        t = 2 * per_image_draw(x, seeds, stream, "uniform") - 1
        if on_edge:
            t = t / rows_like(lp_norm(t, "Linf").clamp_min(1e-12), t)
    else:
        t = per_image_draw(x, seeds, stream, "normal")
        t = t / rows_like(lp_norm(t, "L2").clamp_min(1e-12), t)
    return (x + eps * t).clamp(0, 1)
