"""THE reverse step (:func:`mimicfast.sampling.reverse_step`): replayable for one index, differentiable on request."""

from __future__ import annotations

import pytest
import torch

from mimicfast.api import purify_batch
from mimicfast.presets import get_preset
from mimicfast.sampling import MimicGuidance, PerSampleNoise, StepCoefficients, as_denoiser, reverse_step
from tests.helpers import TinyEpsNet

PRESETS = {
    "paper": dict(preset="paper", scale=1e-3, window=None),
    "released": dict(preset="released", window=None),
}


def _setup(name: str, steps: int = 8):
    spec = dict(PRESETS[name])
    preset = get_preset(spec.pop("preset")).replace(steps=steps, **spec)
    denoiser = as_denoiser(TinyEpsNet(learn_sigma=True).double())
    y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    sigmas = denoiser.sigmas(preset.steps, preset.spacing)
    coef = StepCoefficients.build(sigmas, preset.eta, device="cpu", dtype=torch.float64)
    learned = preset.learned_variance and preset.eta == 1.0
    return preset, denoiser, y, sigmas, coef, learned


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_loop_of_steps_replays_purify_batch_with_saved_noise_states(name: str) -> None:
    """Step i recomputed from (x_i, y, i) and the noise re-drawn from a generator snapshot gives x_{i+1} exactly."""
    preset, denoiser, y, sigmas, coef, learned = _setup(name)
    seeds = [3, 4]
    expected = purify_batch(denoiser, y, preset, seeds)
    guidance = MimicGuidance(y, preset, sigmas)
    noise = PerSampleNoise(seeds, y.shape[1:], dtype=torch.float64)
    xs = [noise() * float((1 + sigmas[0] ** 2).sqrt())]
    states = []
    for i in range(preset.steps):
        states.append(noise.get_state())
        x, _ = reverse_step(denoiser, xs[-1], y, i, noise(), coef, guidance=guidance, learned_variance=learned,
                            clip_denoised=preset.clip_denoised)  # fmt: skip
        xs.append(x)
    assert torch.equal(xs[-1], expected)
    i = preset.steps // 2
    noise.set_state(states[i])
    again, _ = reverse_step(denoiser, xs[i], y, torch.tensor([i]), noise(), coef, guidance=guidance,
                            learned_variance=learned, clip_denoised=preset.clip_denoised)  # fmt: skip
    assert torch.equal(again, xs[i + 1])


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_differentiable_step_has_the_same_value_and_a_graph(name: str, guided: bool) -> None:
    preset, denoiser, y, sigmas, coef, learned = _setup(name)
    guidance = MimicGuidance(y, preset, sigmas) if guided else None
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn_like(x)
    plain, _ = reverse_step(denoiser, x, y, 2, z, coef, guidance=guidance, learned_variance=learned)
    assert not plain.requires_grad
    xg = x.clone().requires_grad_(True)
    diff, _ = reverse_step(denoiser, xg, y, 2, z, coef, guidance=guidance, learned_variance=learned, differentiable=True)
    assert torch.equal(diff.detach(), plain)
    (grad,) = torch.autograd.grad(diff.sum(), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_unguided_differentiable_step_passes_gradcheck() -> None:
    """The step's Jacobian w.r.t. x_i and z_i is the analytic one (the network and the update, in float64)."""
    preset, denoiser, y, sigmas, coef, learned = _setup("paper")
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)

    def step(x, z):
        return reverse_step(denoiser, x, y, 1, z, coef, learned_variance=learned, differentiable=True)[0]

    assert torch.autograd.gradcheck(step, (x, z))
