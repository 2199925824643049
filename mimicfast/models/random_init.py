"""Random, non-degenerate weights for tests and speed benchmarks (speed does not depend on the values).

The reference initialisations zero or shrink output convolutions, so a freshly built network can output
exactly 0 and hide bugs. This follows the parity fixtures' convention (fixtures README): weights with 2+ dims
N(0, 1/fan_in), normalisation scales 1 + N(0, 0.2^2), other vectors N(0, 0.1^2).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def randomize_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every parameter of ``module`` in place (seeded, on the parameters' device); returns it in eval mode."""
    params = list(module.parameters())
    if not params:
        return module.eval()
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    # Norm layers by class name: guided-diffusion's GroupNorm32 subclasses nn.GroupNorm, EDM's GroupNorm does not.
    norm_scales = {
        id(m.weight) for m in module.modules() if "Norm" in type(m).__name__ and getattr(m, "weight", None) is not None
    }
    with torch.no_grad():
        for p in params:
            z = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
            if p.dim() >= 2:
                p.copy_(z / math.sqrt(p[0].numel()))
            else:
                p.copy_(1 + 0.2 * z if id(p) in norm_scales else 0.1 * z)
    return module.eval()
