"""Shared pieces of the training loops: seeded batch order, resumable checkpoints, safetensors export.

A run is a pure function of its seed: the batch order of epoch ``e`` is a permutation drawn from a
generator seeded with ``(seed, e)``, and every random draw of a step (augmentation, diffusion noise,
timesteps) comes from a generator seeded with ``(seed, step)``. Resuming from a checkpoint at step
``s`` therefore replays exactly the same steps ``s, s+1, ...`` an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from mimicfast.atomic import save_torch
from mimicfast.errors import CheckpointError


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, step, salt)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + salt)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the examples in global step ``step`` (epochs of ``n // batch_size`` full batches)."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=step_generator(seed, epoch, salt=1))
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
        return torch.load(path, map_location="cpu", weights_only=True)
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
    save_file(tensors, str(path))
    path.chmod(0o644)  # package data: readable by everyone (safetensors writes 0600)
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
