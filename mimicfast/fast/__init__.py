"""The fast purification path: static buffers, CUDA-graph replay, mixed precision, automatic batch sizing.

    >>> from mimicfast.fast import FastPurifier, auto_batch_size, purify_batch_fast
    >>> x0 = purify_batch_fast(denoiser, y, preset, seeds, autocast="bf16")   # graphs on CUDA by default

Modules: :mod:`~mimicfast.fast.loop` (static buffers around THE reverse step,
:func:`mimicfast.sampling.step.reverse_step`: the eager fast path, and what the graphs capture),
:mod:`~mimicfast.fast.graphed` (capture and replay), :mod:`~mimicfast.fast.input_vjp` (VJPs that keep only what
the input gradient needs; networks register their float32 GroupNorms there), :mod:`~mimicfast.fast.precision`
(autocast, channels_last, ``torch.compile``), :mod:`~mimicfast.fast.memory` (batch size from free memory),
:mod:`~mimicfast.fast.purify` (entry points). Importing this package does not initialise CUDA; it imports no
network.
"""

from mimicfast.fast.graphed import GraphedLoop
from mimicfast.fast.input_vjp import input_only_vjp
from mimicfast.fast.loop import FastLoop, segments
from mimicfast.fast.memory import Footprint, auto_batch_size, batch_from_budget, measure_footprint
from mimicfast.fast.precision import PrecisionDenoiser, apply_policy, resolve_autocast
from mimicfast.fast.purify import FastPurifier, purify_batch_fast

__all__ = [
    "FastLoop",
    "FastPurifier",
    "Footprint",
    "GraphedLoop",
    "PrecisionDenoiser",
    "apply_policy",
    "auto_batch_size",
    "batch_from_budget",
    "input_only_vjp",
    "measure_footprint",
    "purify_batch_fast",
    "resolve_autocast",
    "segments",
]
