"""Automatic batch sizing: as many images per sampler call as fit in the memory that is free now.

The footprint of a purification is affine in the batch size: ``fixed + per_image * B``. It is measured,
not modelled: two probe batches each run the most memory-hungry step of the loop once (a guided step:
forward with autograd, the input-VJP, the residual, the update) and the line through their peaks gives
``fixed`` and ``per_image``.

* CUDA: the peak is ``torch.cuda.max_memory_allocated`` over the probe step (cuDNN/cuBLAS workspaces and
  the static buffers included); the budget is ``torch.cuda.mem_get_info`` after emptying the cache. A CUDA
  graph's private pool holds one step's peak, so the eager probe sizes the graphed path too.
* CPU fallback: torch keeps no allocator statistics there, so the peak is estimated as the bytes of the
  distinct non-parameter tensors the forward saves for backward (the activations; counted with
  ``torch.autograd.graph.saved_tensors_hooks``) plus the sampler's state buffers; the budget is the
  kernel's ``MemAvailable``.

A safety factor (default 0.85) leaves room for fragmentation and for what other processes allocate.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mimicfast.autograd_memory import SavedTensorPeak
from mimicfast.errors import InputError
from mimicfast.fast.input_vjp import input_only_vjp
from mimicfast.fast.loop import FastLoop
from mimicfast.fast.precision import apply_policy
from mimicfast.presets import Preset
from mimicfast.sampling.denoisers import Denoiser
from mimicfast.sampling.step import denoise, uses_learned_variance
from mimicfast.validate import check_count

# Tensors of the batch's shape alive at a step's peak besides the network's activations: x, y, x0, the
# residual, J^T r, the noise, the update's temporaries (CPU estimate only; CUDA measures).
_STATE_TENSORS = 8


@dataclass(frozen=True)
class Footprint:
    """Memory of one purification step: ``fixed_bytes + per_image_bytes * batch``."""

    fixed_bytes: int
    per_image_bytes: int

    def at(self, batch: int) -> int:
        """Predicted peak bytes at ``batch`` images."""
        return self.fixed_bytes + self.per_image_bytes * batch


def batch_from_budget(
    budget_bytes: int, footprint: Footprint, *, safety: float = 0.85, max_batch: int | None = None
) -> int:
    """The largest batch whose predicted footprint fits in ``safety * budget_bytes`` (at least 1).

    Returns 1 even when a single image does not fit by the prediction: the caller then gets the real
    out-of-memory error with its real numbers instead of a refusal based on an estimate.
    """
    if not 0 < safety <= 1:
        raise InputError(f"safety must be in (0, 1], got {safety}")
    if max_batch is not None:
        check_count(max_batch, "max_batch")
    usable = safety * budget_bytes - footprint.fixed_bytes
    per_image = max(footprint.per_image_bytes, 1)
    batch = max(1, math.floor(usable / per_image))
    return batch if max_batch is None else min(batch, max_batch)


def free_memory(device: torch.device | str) -> int:
    """Bytes free for new tensors on ``device`` now: ``mem_get_info`` on CUDA, ``MemAvailable`` on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # cached-but-unused blocks cannot serve a graph's private pool
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _cuda_peak(denoiser: Denoiser, preset: Preset, shape: Sequence[int], device, dtype, input_vjp: bool) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    loop = FastLoop(denoiser, preset, shape, device=device, dtype=dtype, input_only_vjp=input_vjp)
    loop.reset(torch.zeros(shape, device=device, dtype=dtype), range(shape[0]))
    loop.step(any(loop.kinds))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del loop
    return int(peak)


def _cpu_peak(denoiser: Denoiser, preset: Preset, shape: Sequence[int], device, dtype, input_vjp: bool) -> int:
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
    sigma = torch.ones(shape[0], device=device, dtype=dtype)
    learned = uses_learned_variance(denoiser, preset.learned_variance, preset.eta)
    mode = input_only_vjp() if input_vjp else contextlib.nullcontext()
    with torch.enable_grad(), SavedTensorPeak(exclude=denoiser.parameters()) as probe, mode:
        denoise(denoiser, x, sigma, learned)
    state = _STATE_TENSORS * math.prod(shape) * dtype.itemsize
    return probe.peak + state


def measure_footprint(
    denoiser: Denoiser,
    preset: Preset,
    image_shape: Sequence[int],
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    probe_batches: tuple[int, int] = (1, 3),
    input_only_vjp: bool = True,
) -> Footprint:
    """Fit ``fixed + per_image * B`` through the peaks of two probe batches (see the module docstring).

    Args:
        denoiser: the denoiser as the sampler will call it (after the precision policy).
        preset: the method's settings (whether steps are guided, learned variance).
        image_shape: ``[C, H, W]``.
        device, dtype: where and in which working dtype the purification will run.
        probe_batches: the two batch sizes probed, ascending.
        input_only_vjp: whether the sampler's guided steps run under :class:`mimicfast.fast.input_only_vjp`
            (:class:`FastLoop`; it changes the footprint).
    """
    b1, b2 = probe_batches
    if not 1 <= b1 < b2:
        raise InputError(f"probe_batches must be two ascending batch sizes >= 1, got {probe_batches}")
    device = torch.device(device)
    peak = _cuda_peak if device.type == "cuda" else _cpu_peak
    p1 = peak(denoiser, preset, (b1, *image_shape), device, dtype, input_only_vjp)
    p2 = peak(denoiser, preset, (b2, *image_shape), device, dtype, input_only_vjp)
    per_image = max(math.ceil((p2 - p1) / (b2 - b1)), 1)
    return Footprint(fixed_bytes=max(p1 - per_image * b1, 0), per_image_bytes=per_image)


def auto_batch_size(
    denoiser: Denoiser,
    preset: Preset,
    image_shape: Sequence[int],
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | str | None = None,
    channels_last: bool = False,
    n_images: int | None = None,
    safety: float = 0.85,
    budget_bytes: int | None = None,
    input_only_vjp: bool = True,
) -> int:
    """Images per sampler call for the fast path on ``device``: measured footprint vs free memory.

    Args:
        denoiser: the plain denoiser (the precision policy is applied here as the fast path will).
        preset: the method's settings.
        image_shape: ``[C, H, W]``.
        device, dtype: where and in which working dtype the purification will run.
        autocast, channels_last: the fast path's policy (they change the footprint).
        n_images: never return more than this (the number of images to purify).
        safety: fraction of the budget to plan for.
        budget_bytes: memory to plan for (default: :func:`free_memory` after the probes).
        input_only_vjp: the fast path's setting (:class:`FastLoop`; it changes the footprint).

    Returns:
        A batch size >= 1.
    """
    wrapped = apply_policy(denoiser, autocast=autocast, channels_last=channels_last)
    footprint = measure_footprint(wrapped, preset, image_shape, device=device, dtype=dtype, input_only_vjp=input_only_vjp)
    budget = free_memory(device) if budget_bytes is None else budget_bytes
    return batch_from_budget(budget, footprint, safety=safety, max_batch=n_images)
