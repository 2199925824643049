"""Per-image seeds of an evaluation: every random number an image sees comes from its own streams.

A seed is :func:`mimicfast.seeding.derive_seed` ``(run seed, purpose, image index, counter)``: it depends on the
image's index in the dataset and never on its batch or process, so a sharded run reproduces a single-process run
image by image. The purpose code is part of the stream, so the defense draws that score an image, the draws an
attack averages over (EOT), the attack's own random starts and the draws the attacker uses to choose its single
submission are independent streams (docs/DESIGN.md §7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mimicfast.seeding import derive_seed

# Purpose -> its stream code. "defense": the scoring draws (counter = draw d); "eot": the defense draws inside an
# attack (counter = the model call); "attack": the attack's own randomness; "choice": the attack-side draws that
# pick the single submission per image (counter = choice draw k).
PURPOSES = {"defense": 1, "eot": 2, "attack": 3, "choice": 4}


def purpose_seeds(seed: int, purpose: str, indices: Sequence[int], counter: int = 0) -> list[int]:
    """One seed per image of ``indices`` for ``purpose`` (a key of :data:`PURPOSES`) and ``counter``."""
    code = PURPOSES[purpose]
    return [derive_seed(seed, code, int(i), counter) for i in indices]


class DefendedModel(nn.Module):
    """``x -> classifier(purifier(x))`` with fresh, per-image defense draws on every call (what EOT needs).

    Row r of call c is purified with seed ``purpose_seeds(seed, "eot", [indices[r]], c)``, so an image's draws
    depend on its index and on how many times the attack has called the model, not on its batch-mates. Attacks
    call the model on the whole batch in the same row order; a batch of ``k * len(indices)`` rows (an attack that
    stacks k copies) is read as k consecutive calls.

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

    def restrict_rows(self, rows: Sequence[int]) -> DefendedModel:
        """This model restricted to ``rows`` of the batch, continuing the call count: each of those images gets
        the draws it would get in a call on the whole batch (:func:`mimicfast.attacks.checks.rows_of`)."""
        restricted = DefendedModel(self.purifier, self.classifier, self.seed, [self.indices[r] for r in rows])
        restricted.calls = self.calls
        return restricted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.indices)
        if x.shape[0] % n:
            raise ValueError(f"the attack called the model on {x.shape[0]} rows; expected a multiple of {n}")
        copies = x.shape[0] // n
        seeds = [s for c in range(copies) for s in purpose_seeds(self.seed, "eot", self.indices, self.calls + c)]
        self.calls += copies
        return self.classifier(self.purifier(x, seed=seeds))
