"""Per-sample random streams, so that an image's result never depends on its batch-mates.

Sample i draws every one of its random numbers (the start noise, then one draw per ancestral step)
from its own generator seeded with ``seeds[i]``; ``seed: int`` for a batch means ``seed + i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PerSampleNoise:
    """Draws standard normal noise of shape [B, *sample_shape], sample i from its own generator.

    Each call advances every stream by one draw of ``sample_shape``. :meth:`get_state` / :meth:`set_state`
    snapshot and restore every stream, so a caller can draw the noise of reverse step i again (e.g. to
    recompute that step in a backward sweep) without keeping the tensor.
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

    def get_state(self) -> list[torch.Tensor]:
        """The state of every sample's generator (a CPU uint8 tensor each), for :meth:`set_state`."""
        return [g.get_state() for g in self.generators]

    def set_state(self, state: Sequence[torch.Tensor]) -> None:
        """Restore the generators to a :meth:`get_state` snapshot: the next call draws what followed it."""
        for gen, s in zip(self.generators, state, strict=True):
            gen.set_state(s)
