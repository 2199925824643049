"""Seeds: what an integer seed means, checked once, and the one way to derive independent streams from it.

* **Image i uses ``seed + i``.** :func:`expand_seeds` turns ``seed: int`` for a batch into one seed per image
  (``seed, seed + 1, ...``) or checks a sequence of per-image seeds; ``purify``, the attacks and the evaluator all
  mean this by ``seed``.
* **No seed is private randomness.** :func:`private_seeds` draws seeds from the operating system's entropy
  (``secrets``), for a defense that must stay unpredictable: it neither reads nor advances torch's or numpy's
  global generators, so ``torch.manual_seed(k)`` cannot replay it and it never shifts a caller's stream.
* **One derivation scheme.** :func:`derive_seed` mixes a seed with a stream (a tuple of non-negative integers:
  a purpose code, an image index, a counter...) through numpy's ``SeedSequence`` (a hash designed for this) into a
  64-bit seed; :func:`generator` is a CPU ``torch.Generator`` seeded with it. Different streams give independent,
  reproducible generators that depend on nothing else (not on the batch, the device or torch's global state).
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mimicfast.errors import InputError

__all__ = ["SEED_MAX", "check_seed", "derive_seed", "expand_seeds", "generator", "private_seeds"]

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


def private_seeds(count: int) -> list[int]:
    """``count`` seeds in [0, 2**64 - 1] from the operating system's entropy (never from a global generator)."""
    return [secrets.randbits(64) for _ in range(count)]


def derive_seed(seed: int, *stream: int) -> int:
    """A 64-bit seed derived from ``seed`` and ``stream`` (non-negative ints) by numpy's ``SeedSequence``."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint64)
    return int(state[0])


def generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` ``(seed, *stream)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *stream))
