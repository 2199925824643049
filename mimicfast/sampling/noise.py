"""Per-sample random streams, so that an image's result never depends on its batch-mates.

Sample i draws every one of its random numbers (the start noise, then one draw per ancestral step)
from its own generator seeded with ``seeds[i]``; ``seed: int`` for a batch means ``seed + i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mimicfast.errors import InputError


def expand_seeds(seed: int | Sequence[int], batch: int) -> list[int]:
    """``int`` -> ``[seed, seed + 1, ...]``; a sequence must have one seed per sample."""
    if isinstance(seed, int):
        return [seed + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise InputError(f"got {len(seeds)} seeds for a batch of {batch}")
    return seeds


class PerSampleNoise:
    """Draws standard normal noise of shape [B, *sample_shape], sample i from its own generator.

    Each call advances every stream by one draw of ``sample_shape``.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        sample_shape: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def __call__(self) -> torch.Tensor:
        return torch.stack(
            [torch.randn(self.sample_shape, generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        )
