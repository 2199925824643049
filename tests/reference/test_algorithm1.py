"""The spec's own respacing and window (mimicfast.reference.algorithm1) agree with the core definitions."""

from __future__ import annotations

import pytest

from mimicfast.reference.algorithm1 import in_window, visited_timesteps
from mimicfast.schedules import space_timesteps, window_mask


@pytest.mark.parametrize("num_train", [1000, 500, 4000])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 20, 50, 100, 250, 1000])
def test_visited_timesteps_match_the_sampler(steps: int, num_train: int) -> None:
    if steps > num_train:
        return
    assert visited_timesteps(steps, "uniform", num_train) == space_timesteps(steps, "uniform", num_train)
    if num_train % steps == 0:
        assert visited_timesteps(steps, "released", num_train) == space_timesteps(steps, "released", num_train)


@pytest.mark.parametrize("window", [None, (0.2, 0.5), (0.11, 0.79), (0.0, 1.0), (0.25, 0.25)])
@pytest.mark.parametrize("steps", [1, 3, 10, 20, 100, 1000])
def test_window_matches_the_sampler(steps: int, window) -> None:
    assert [in_window(steps - i, steps, window) for i in range(steps)] == window_mask(steps, window)
