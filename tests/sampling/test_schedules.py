"""Schedules, respacing, windows and the sigma <-> timestep map."""

from __future__ import annotations

import json

import pytest
import torch

from mimicfast.errors import InputError
from mimicfast.sampling import (
    EpsTimestepDenoiser,
    alphas_cumprod,
    as_denoiser,
    linear_betas,
    sigma_grid,
    space_timesteps,
    window_mask,
)
from mimicfast.sampling.schedules import cosine_betas, sigmas_from_alphas_cumprod
from tests.helpers import TinyEpsNet


def test_schedule_matches_fixture(parity_dir) -> None:
    facts = json.loads((parity_dir / "schedules.json").read_text())["ddpm_linear_schedule"]
    betas = linear_betas()
    abar = alphas_cumprod(betas)
    sigma = sigma_grid(list(range(1000))).flip(0)[1:]
    for i, t in enumerate(facts["t"]):
        assert betas[t].item() == pytest.approx(facts["beta"][i], rel=1e-15)
        assert abar[t].item() == pytest.approx(facts["alpha_bar"][i], rel=1e-13)
        assert sigma[t].item() == pytest.approx(facts["equivalent_sigma"][i], rel=1e-13)
    assert abar.sum().item() == pytest.approx(facts["alpha_bar_sum"], rel=1e-13)


def test_uniform_spacing_is_guided_diffusions() -> None:
    ts = space_timesteps(100, "uniform")
    assert len(ts) == 100 and ts[0] == 0 and ts[-1] == 999
    assert ts[:4] == [0, 10, 20, 30] and ts == sorted(set(ts))
    assert space_timesteps(1000, "uniform") == list(range(1000))


def test_released_spacing_is_the_authors() -> None:
    assert space_timesteps(100, "released") == list(range(9, 1000, 10))
    with pytest.raises(InputError, match="dividing"):
        space_timesteps(300, "released")


@pytest.mark.parametrize(
    ("steps", "window", "count", "first", "last"),
    [
        (1000, (0.2, 0.5), 301, 500, 800),  # k in [200, 500], i = T - k
        (100, (0.2, 0.5), 31, 50, 80),
        (100, (0.11, 0.79), 69, 21, 89),  # released: 20 < count < 90
        (10, None, 10, 0, 9),
    ],
)
def test_window(steps, window, count, first, last) -> None:
    mask = window_mask(steps, window)
    idx = [i for i, m in enumerate(mask) if m]
    assert (len(idx), idx[0], idx[-1]) == (count, first, last)


def test_sigma_grid_descends_to_zero() -> None:
    s = sigma_grid(space_timesteps(50))
    assert s.shape == (51,) and s[-1] == 0 and bool((s[:-1] > s[1:]).all())


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
    abar = alphas_cumprod(cosine_betas())
    assert abar[0] > 0.9999 and abar[-1] < 1e-4 and bool((abar[1:] < abar[:-1]).all())
