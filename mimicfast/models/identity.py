"""Content identity of a network: what it computes, independent of the file it came from.

One digest serves every place that must notice "same path, other weights" or "other file, same weights": the
resume chunks of ``mimicfast purify`` and the run identity of ``mimicfast eval``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["model_digest", "update_with_tensors"]


def update_with_tensors(digest: hashlib._Hash, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed ``(name, tensor)`` pairs into ``digest``: each name, dtype, shape and the tensor's bytes."""
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\0{name}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())


def model_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of what a network computes: its class name, the config it was built from
    (``checkpoint_config`` when the loader set one) and every tensor of its state dict (names, dtypes, shapes,
    bytes). A different file with the same weights gives the same digest; the same path with new weights or a
    changed config does not."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update(json.dumps(getattr(model, "checkpoint_config", None), sort_keys=True, default=repr).encode())
    update_with_tensors(digest, sorted(model.state_dict().items()))
    return digest.hexdigest()
