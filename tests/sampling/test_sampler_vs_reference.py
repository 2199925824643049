"""The sigma-space sampler equals Algorithm 1 written in VP coordinates (docs/DESIGN.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from mimicfast.api import purify_batch
from mimicfast.presets import get_preset
from mimicfast.reference.algorithm1 import mimic_diffusion_reference
from mimicfast.sampling import PerSampleNoise, as_denoiser
from tests.helpers import TinyEpsNet

CASES = {
    "paper": dict(preset="paper", scale=1e-3),
    "paper-eta0": dict(preset="paper", scale=1e-3, eta=0.0),
    "paper-nowindow-noclip": dict(preset="paper", scale=1e-4, window=None, clip_denoised=False),
    "paper-long-only": dict(preset="paper", scale=1e-3, upsample=None),
    "paper-short-only": dict(preset="paper", scale=1e-3, long_range=False),
    "paper-l2": dict(preset="paper", scale=1e-3, distance="l2"),
    "paper-nearest-mean": dict(preset="paper", scale=1e-3, upsample="nearest", reduction="mean"),
    "paper-l2-nearest": dict(preset="paper", scale=1e-3, distance="l2", upsample="nearest"),
    "released": dict(preset="released"),
    "released-vjp": dict(preset="released", jacobian="vjp"),
}


def _run_both(case: str, learn_sigma: bool, steps: int = 20, batch: int = 2):
    spec = dict(CASES[case])
    preset = get_preset(spec.pop("preset")).replace(steps=steps, **spec)
    net = TinyEpsNet(learn_sigma=learn_sigma).double()
    gen = torch.Generator().manual_seed(1)
    y = torch.rand(batch, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    seeds = [11 + i for i in range(batch)]

    fast = purify_batch(as_denoiser(net), y, preset, seeds)
    noise = PerSampleNoise(seeds, y.shape[1:], dtype=torch.float64)
    ref = mimic_diffusion_reference(net, y, preset, noise, learned_variance=learn_sigma)
    return fast, ref


@pytest.mark.parametrize("learn_sigma", [False, True], ids=["fixed-var", "learned-var"])
@pytest.mark.parametrize("case", list(CASES))
def test_sampler_equals_reference_float64(case: str, learn_sigma: bool) -> None:
    fast, ref = _run_both(case, learn_sigma)
    assert torch.isfinite(ref).all()
    rel = (fast - ref).abs().max() / ref.abs().max()
    assert rel <= 1e-6, f"relative error {rel:.3e}"


def test_guidance_changes_the_result() -> None:
    """The comparison above is not vacuous: the guidance term moves the output."""
    net = TinyEpsNet().double()
    y = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    guided = purify_batch(as_denoiser(net), y, get_preset("released").replace(steps=20), [0])
    unguided = purify_batch(as_denoiser(net), y, get_preset("released").replace(steps=20, scale=0.0), [0])
    assert (guided - unguided).abs().max() > 1e-3


def _authors_released_loop(net, y: torch.Tensor, noise, steps: int) -> torch.Tensor:
    """The released code's purification loop as its formulas read (DDIM form, eta = 1), batch 16.

    Written independently of mimicfast's presets: seq = [9, 19, ..., 999]; ``count`` counts steps from 0;
    guided iff 20 < count < 90 (for 100 steps); loss = torch.norm(d, 1, dim=1).mean() over the batch, for d and
    for the nearest-x4-upsampled d; rho = 3000 sqrt(abar_t); predicted noise held constant.
    """
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    stride = 1000 // steps
    seq = list(range(stride - 1, 1000, stride))
    seq_next = [-1, *seq[:-1]]
    x = noise()
    lo, hi = round(0.2 * steps), round(0.9 * steps)
    for count, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next), strict=True)):
        at = abar[i]
        at_next = abar[j] if j >= 0 else torch.tensor(1.0, dtype=torch.float64)
        t = torch.full((x.shape[0],), float(i), dtype=torch.float64)
        with torch.no_grad():
            et = net(x, t)[:, :3]
        c1 = ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1**2).sqrt()
        guidance = 0.0
        xt = x.detach().requires_grad_(True)
        x0 = (xt - et * (1 - at).sqrt()) / at.sqrt()
        if lo < count < hi:
            up = torch.nn.functional.interpolate
            m1 = torch.norm(x0 - y, 1, 1).mean()
            m2 = torch.norm(up(x0, scale_factor=4) - up(y, scale_factor=4), 1, 1).mean()
            g1 = torch.autograd.grad(m1, xt, retain_graph=True)[0]
            g2 = torch.autograd.grad(m2, xt)[0]
            guidance = 3000 * at.sqrt() * g1 + 3000 * at.sqrt() * g2
        z = noise() if j >= 0 else torch.zeros_like(x)
        x = (at_next.sqrt() * x0 + c1 * z + c2 * et - guidance).detach()
    return x


def test_released_preset_matches_authors_loop_at_batch_16() -> None:
    steps, batch = 100, 16
    net = TinyEpsNet().double()
    y = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    seeds = list(range(batch))
    ours = purify_batch(as_denoiser(net), y, get_preset("released"), seeds)
    theirs = _authors_released_loop(net, y, PerSampleNoise(seeds, y.shape[1:], dtype=torch.float64), steps)
    assert math.isclose(float((ours - theirs).abs().max()), 0.0, abs_tol=1e-9 * float(theirs.abs().max()))
