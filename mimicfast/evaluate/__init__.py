"""Robustness evaluation of a classifier behind MimicDiffusion (``mimicfast eval``; docs/DESIGN.md §7).

* :func:`run` -- attack, purify with N defense draws, write one row per (defense, attack, image, draw) into a
  resumable folder, shard over ``torchrun`` ranks, summarise (:mod:`mimicfast.evaluate.runner`);
* :func:`summarize` -- ``summary.json`` / ``summary.md`` of a folder: accuracy with the defense's own seed, worst
  of N and majority of N draws, each with its 95% Wilson interval and image count
  (:mod:`mimicfast.evaluate.summary`, :mod:`mimicfast.evaluate.protocols`);
* :func:`accuracy` -- top-1 accuracy of a classifier on a batch.

Importing this package imports neither torch nor the models; the names resolve on first use.
"""

from __future__ import annotations

from mimicfast._lazy import lazy_getattr

_LAZY = {
    "run": "mimicfast.evaluate.runner",
    "summarize": "mimicfast.evaluate.summary",
    "accuracy": "mimicfast.evaluate.scoring",
    "wilson_interval": "mimicfast.evaluate.protocols",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
