"""The denoiser owns its noise levels: every sampler (eager, fast, public API) samples a model on its training schedule.

For the DDPM linear, the cosine (Nichol & Dhariwal) and a custom 500-step table, the fast path equals the eager
path bit for bit on the CPU and both equal Algorithm 1 in float64 (docs/DESIGN.md §4).
"""

from __future__ import annotations

import pytest
import torch

import mimicfast
from mimicfast.api import purify_batch
from mimicfast.fast import apply_policy, purify_batch_fast
from mimicfast.presets import get_preset
from mimicfast.reference.algorithm1 import mimic_diffusion_reference
from mimicfast.sampling import EpsTimestepDenoiser, PerSampleNoise, SigmaDenoiser, as_denoiser
from mimicfast.schedules import alphas_cumprod, cosine_betas, linear_betas, sigma_grid, sigmas_from_alphas_cumprod
from tests.helpers import TinyEpsNet

SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    # A custom table of another length: "scaled linear" betas over 500 training steps.
    "custom-500": lambda: torch.linspace(1e-4**0.5, 0.02**0.5, 500, dtype=torch.float64) ** 2,
}
PRESETS = {
    "paper": dict(preset="paper", scale=1e-3),
    "released-vjp": dict(preset="released", jacobian="vjp"),
}


def _preset(name: str, steps: int = 10):
    spec = dict(PRESETS[name])
    return get_preset(spec.pop("preset")).replace(steps=steps, **spec)


def _y(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_sigmas_come_from_the_training_table(schedule: str) -> None:
    betas = SCHEDULES[schedule]()
    denoiser = EpsTimestepDenoiser(TinyEpsNet(), betas)
    table = sigmas_from_alphas_cumprod(alphas_cumprod(betas))
    for spacing in ("uniform", "released"):
        s = denoiser.sigmas(10, spacing)
        assert s.dtype == torch.float64 and s.shape == (11,)
        assert s[-1] == 0 and (s[:-1] > s[1:]).all()
        assert torch.isin(s[:-1], table).all()
    assert denoiser.sigmas(10, "uniform")[0] == table[-1]  # the first step starts at the last training step
    assert torch.equal(apply_policy(denoiser, autocast="bf16").sigmas(10, "uniform"), denoiser.sigmas(10, "uniform"))


def test_continuous_denoisers_use_the_ddpm_linear_grid() -> None:
    linear = EpsTimestepDenoiser(TinyEpsNet())
    assert torch.equal(SigmaDenoiser(lambda x, sigma: x).sigmas(20, "uniform"), linear.sigmas(20, "uniform"))


@pytest.mark.parametrize("learn_sigma", [False, True], ids=["fixed-var", "learned-var"])
@pytest.mark.parametrize("preset_name", list(PRESETS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_fast_equals_eager_equals_algorithm1(schedule: str, preset_name: str, learn_sigma: bool) -> None:
    betas = SCHEDULES[schedule]()
    net = TinyEpsNet(learn_sigma=learn_sigma).double()
    denoiser = as_denoiser(net, betas)
    preset, y, seeds = _preset(preset_name), _y(), [5, 6]
    eager = purify_batch(denoiser, y, preset, seeds)
    fast = purify_batch_fast(denoiser, y, preset, seeds, graphs=False)
    assert torch.equal(fast, eager), f"max |diff| {(fast - eager).abs().max():.3e}"
    noise = PerSampleNoise(seeds, y.shape[1:], dtype=torch.float64)
    ref = mimic_diffusion_reference(net, y, preset, noise, betas=betas, learned_variance=learn_sigma)
    rel = float((eager - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-10, f"relative error {rel:.3e}"


def test_public_purify_fast_equals_eager_on_a_cosine_model() -> None:
    """Through :func:`mimicfast.purify`: a model that carries cosine ``betas`` is sampled on them either way."""
    net = TinyEpsNet().double()
    net.betas = cosine_betas()
    x = (_y() + 1) / 2
    eager = mimicfast.purify(x, net, preset="paper", steps=10, scale=1e-3, fast=False)
    fast = mimicfast.purify(x, net, preset="paper", steps=10, scale=1e-3, fast=True)
    assert torch.equal(fast, eager)
    linear = mimicfast.purify(x, TinyEpsNet().double(), preset="paper", steps=10, scale=1e-3, fast=True)
    assert not torch.equal(fast, linear)  # the schedule matters, so the equality above is not vacuous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigma_to_t_is_exact_on_the_table(dtype) -> None:
    den = EpsTimestepDenoiser(TinyEpsNet())
    t = torch.tensor([0, 1, 9, 499, 998, 999])
    sigma = den.train_sigmas[t].to(dtype)
    assert torch.equal(den.sigma_to_t(sigma), t.to(dtype))
    mid = (den.train_sigmas[10].log() + den.train_sigmas[11].log()).div(2).exp().to(dtype)
    assert 10 < den.sigma_to_t(mid[None]).item() < 11


def test_a_models_own_schedule_is_used() -> None:
    """A model trained with another schedule (guided-diffusion's 64x64 model: cosine) is sampled on its own grid."""
    net = TinyEpsNet()
    net.register_buffer("betas", cosine_betas(), persistent=False)
    den = as_denoiser(net)
    expected = sigmas_from_alphas_cumprod(alphas_cumprod(cosine_betas()))
    torch.testing.assert_close(den.train_sigmas, expected, rtol=0, atol=0)
    grid = sigma_grid([0, 499, 999], den.train_sigmas)
    torch.testing.assert_close(grid[:3], expected[[999, 499, 0]], rtol=0, atol=0)
