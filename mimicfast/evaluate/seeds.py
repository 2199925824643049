"""Per-image seeds of an evaluation: every random number an image sees comes from its own seeds.

A seed is derived from ``(run seed, the image's index in the dataset, purpose, counter)`` only, never from the
image's batch or process, so a sharded run reproduces a single-process run image by image. Each purpose owns a
disjoint range of seeds (its code sits in bits 56-58), so the defense seeds that score an image never coincide
with the draws an attack averages over (EOT) or with the attack's own random starts (docs/DESIGN.md §7).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

# Purpose -> its range code. "defense": the seeds the defense is scored with (draw d = counter d);
# "eot": the defense draws inside an attack (counter = the model call); "attack": the attack's own randomness.
PURPOSES = {"defense": 1, "eot": 2, "attack": 3}
_LOW_BITS = 56


def derive_seed(seed: int, index: int, purpose: str, counter: int = 0) -> int:
    """A 59-bit seed for image ``index`` of a run seeded ``seed``; disjoint ranges for different purposes."""
    digest = hashlib.blake2b(f"{seed}:{index}:{counter}".encode(), digest_size=8, person=purpose.encode()).digest()
    return (PURPOSES[purpose] << _LOW_BITS) | (int.from_bytes(digest, "little") & ((1 << _LOW_BITS) - 1))


def image_seeds(seed: int, indices: Sequence[int], purpose: str, counter: int = 0) -> list[int]:
    """:func:`derive_seed` for each image of a batch."""
    return [derive_seed(seed, i, purpose, counter) for i in indices]


class DefendedModel(nn.Module):
    """``x -> classifier(purifier(x))`` with fresh, per-image defense draws on every call (what EOT needs).

    Row r of call c is purified with seed ``derive_seed(seed, indices[r], "eot", c)``, so an image's draws depend
    on its index and on how many times the attack has called the model, not on its batch-mates. Attacks call the
    model on the whole batch in the same row order; a batch of ``k * len(indices)`` rows (an attack that stacks
    k copies) is read as k consecutive calls.

    Args:
        purifier: ``(x [B, C, H, W], seed=list[int]) -> purified x``, differentiable as the attack needs
            (e.g. ``mimicfast.Purifier(model, grad="bpda")``).
        classifier: ``x [B, C, H, W] in [0, 1] -> logits [B, K]``.
        seed: the run seed.
        indices: dataset index of each image of the batch being attacked.
    """

    def __init__(self, purifier: nn.Module, classifier: nn.Module, seed: int, indices: Sequence[int]) -> None:
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier
        self.seed = seed
        self.indices = list(indices)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.indices)
        if x.shape[0] % n:
            raise ValueError(f"the attack called the model on {x.shape[0]} rows; expected a multiple of {n}")
        copies = x.shape[0] // n
        seeds = [derive_seed(self.seed, self.indices[r % n], "eot", self.calls + r // n) for r in range(x.shape[0])]
        self.calls += copies
        return self.classifier(self.purifier(x, seed=seeds))
