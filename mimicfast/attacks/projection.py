"""Norms, projections onto the threat model and steepest-ascent directions, per image."""

from __future__ import annotations

import torch


def lp_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of ``d [B, ...]``: ``max |d|`` (Linf) or ``sqrt(sum d^2)`` (L2), shape ``[B]``."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def rows_like(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image ``v [B]`` shaped to broadcast over ``like [B, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Map ``x_adv`` into the ``norm``-ball of radius ``eps`` around ``x``, then clip to [0, 1].

    Linf: clip each pixel to ``[x - eps, x + eps]`` (the exact projection onto the intersection with the box).
    L2: scale ``d = x_adv - x`` by ``min(1, eps / ||d||_2)``, then clip to [0, 1]. Clipping moves each pixel of
    ``x + d`` towards ``x`` (which lies in [0, 1]), so it never increases ``||d||``: the result lies in both sets
    (not always the Euclidean projection onto their intersection; Croce & Hein's reference code does the same).
    """
    d = x_adv - x
    if norm == "Linf":
        d = d.clamp(-eps, eps)
    else:
        scale = (eps / lp_norm(d, "L2").clamp_min(1e-12)).clamp(max=1.0)
        d = d * rows_like(scale, d)
    return (x + d).clamp(0, 1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit ``norm``: ``sign(g)`` (Linf) or ``g / ||g||_2`` (L2); 0 where g = 0."""
    if norm == "Linf":
        return grad.sign()
    return grad / rows_like(lp_norm(grad, "L2").clamp_min(1e-12), grad)
