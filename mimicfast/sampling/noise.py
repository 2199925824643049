"""Per-sample random streams, so that an image's result never depends on its batch-mates.

Sample i draws every one of its random numbers (the start noise, then one draw per ancestral step)
from its own generator seeded with ``seeds[i]``; ``seed: int`` for a batch means ``seed + i``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch

from mimicfast.errors import InputError

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes unsigned 64-bit seeds


def check_seed(value: object, what: str = "seed") -> int:
    """``value`` as a Python int in [0, SEED_MAX]; numpy integers are accepted, bools and tensors are not."""
    if isinstance(value, torch.Tensor):
        raise InputError(f"{what} must be a Python int, got a torch.Tensor; pass int(t) or t.tolist()")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not 0 <= value <= SEED_MAX:
        raise InputError(f"{what} must be in [0, 2**64 - 1], got {value}")
    return value


def expand_seeds(seed: int | Sequence[int], batch: int) -> list[int]:
    """One seed per sample: ``int`` -> ``[seed, seed + 1, ..., seed + batch - 1]``; a sequence must hold one
    integer per sample. Every seed must lie in [0, 2**64 - 1] (numpy integers are accepted)."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        first = check_seed(seed, "seed")
        check_seed(first + batch - 1, f"seed + {batch - 1} (the seed of the last image of the batch)")
        return [first + i for i in range(batch)]
    if isinstance(seed, (str, bytes, torch.Tensor)) or not isinstance(seed, Iterable) or getattr(seed, "ndim", 1) != 1:
        if isinstance(seed, torch.Tensor):
            raise InputError("seed must be a Python int or ints, got a torch.Tensor; pass int(t) or t.tolist()")
        raise InputError(f"seed must be an int or a sequence of one int per image, got {type(seed).__name__}")
    seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]
    if len(seeds) != batch:
        raise InputError(f"got {len(seeds)} seeds for a batch of {batch}")
    return seeds


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
