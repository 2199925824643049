"""Shared pieces of the training loops: seeded batch order, resumable checkpoints, safetensors export.

A run is a pure function of its seed: the batch order of epoch ``e`` is a permutation drawn from
:func:`mimicfast.seeding.generator` ``(seed, BATCH_ORDER, e)``, and every random draw of a step (augmentation,
diffusion noise, timesteps, dropout) comes from ``generator(seed, <purpose>, step)``. Resuming from a checkpoint at
step ``s`` therefore replays exactly the same steps ``s, s+1, ...`` an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from mimicfast.atomic import save_torch, write_atomic, write_text
from mimicfast.errors import CheckpointError
from mimicfast.safe_read import MAX_CHECKPOINT_BYTES, open_regular, read_torch
from mimicfast.seeding import generator

# Purpose codes of the random streams of a training run (the first element of the seeding stream).
BATCH_ORDER, AUGMENT, DIFFUSION_NOISE, DROPOUT = 1, 2, 3, 4


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the examples in global step ``step`` (epochs of ``n // batch_size`` full batches)."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=generator(seed, BATCH_ORDER, epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


def batches(n: int, batch_size: int, seed: int, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(step, indices)`` for steps ``start .. stop - 1``."""
    for step in range(start, stop):
        yield step, batch_indices(n, batch_size, seed, step)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically write a training checkpoint (tensors and plain Python values only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` without executing code from it."""
    try:
        with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES, what="training checkpoint") as f:
            return read_torch(f)
    except Exception as exc:  # corrupt file, or one that would need arbitrary unpickling
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from exc


def export_safetensors(module_state: dict[str, torch.Tensor], path: str | os.PathLike,
                       config: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """Write a state dict as safetensors (optionally cast to ``dtype``) and its config JSON beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in module_state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    data = safetensors_bytes(tensors)
    write_atomic(path, lambda f: f.write(data))
    path.chmod(0o644)  # package data: readable by everyone, whatever the umask
    if config is not None:
        write_text(path.with_suffix(".json"), json.dumps(config, indent=2, sort_keys=True) + "\n")
