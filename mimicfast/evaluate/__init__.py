"""Robustness evaluation of a classifier behind MimicDiffusion (``mimicfast eval``; docs/DESIGN.md §7).

* :func:`build_spec` -- check the arguments, load the inputs and resolve the run's identity
  (:mod:`mimicfast.evaluate.prepare`, :mod:`mimicfast.evaluate.spec`);
* :func:`run` -- attack, purify with N scoring draws and K attack-side choice draws, write one row per (defense,
  attack, image, draw) into a resumable, tamper-evident folder, shard over ``torchrun`` ranks, summarise
  (:mod:`mimicfast.evaluate.runner`, :mod:`mimicfast.evaluate.store`, :mod:`mimicfast.evaluate.rows`);
* :func:`summarize` -- ``summary.json`` / ``summary.md`` of a folder: the single submission per image, then every
  attack, each with the defense's own seed, worst of N and majority of N draws, 95% Wilson intervals and image
  counts (:mod:`mimicfast.evaluate.summary`, :mod:`mimicfast.evaluate.protocols`);
* :func:`accuracy` -- top-1 accuracy of a classifier on a batch.

Importing this package imports neither torch nor the models; the names resolve on first use.
"""

from __future__ import annotations

from mimicfast._lazy import lazy_getattr

_LAZY = {
    "build_spec": "mimicfast.evaluate.prepare",
    "RunSpec": "mimicfast.evaluate.spec",
    "run": "mimicfast.evaluate.runner",
    "summarize": "mimicfast.evaluate.summary",
    "accuracy": "mimicfast.evaluate.scoring",
    "wilson_interval": "mimicfast.evaluate.protocols",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
