"""The three ways a stochastic defense's accuracy is reported (docs/DESIGN.md §7), with Wilson intervals.

For one image with defense draws ``d = 0..N-1`` (predicted labels ``p_d``, true label ``y``):

* ``own``: the defense's own seed, draw 0: correct iff ``p_0 == y``;
* ``worst``: worst case over N draws (DiffHammer, 2024): correct iff ``p_d == y`` for every d;
* ``majority``: majority vote over N draws (DiffBreak, 2025): correct iff ``y`` gets strictly more votes than
  any other label (a tie counts as wrong).

A deterministic defense (the bare classifier) has one draw, and the three coincide.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

PROTOCOLS = ("own", "worst", "majority")
_Z95 = 1.959963984540054  # the 97.5% quantile of N(0, 1)


def wilson_interval(correct: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95% by default); ``(0, 1)`` for n = 0.

    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = correct / n``.
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def image_correct(preds: Sequence[int], label: int, protocol: str) -> bool:
    """Whether an image with predictions ``preds`` (one per draw, draw 0 first) counts as correct."""
    if protocol == "own":
        return preds[0] == label
    if protocol == "worst":
        return all(p == label for p in preds)
    if protocol == "majority":
        votes = Counter(preds)
        return votes[label] > max((v for k, v in votes.items() if k != label), default=0)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
