"""The core schedules (mimicfast.schedules): the DDPM table, respacing, windows and the sigma grid."""

from __future__ import annotations

import json

import pytest

from mimicfast.errors import InputError
from mimicfast.schedules import (
    alphas_cumprod,
    cosine_betas,
    linear_betas,
    sigma_grid,
    space_timesteps,
    window_mask,
)


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


def test_cosine_schedule_decreases_from_one_to_almost_zero() -> None:
    abar = alphas_cumprod(cosine_betas())
    assert abar[0] > 0.9999 and abar[-1] < 1e-4 and bool((abar[1:] < abar[:-1]).all())
