"""Content identity of a network: a SHA-256 of what it computes (its class, its config and every tensor of its
state dict, by name, dtype, shape and bytes), so the same weights read from another file or format give the same
digest and new weights at the same path do not."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["network_digest", "update_with_tensors"]


def update_with_tensors(digest: Any, tensors: Mapping[str, Tensor]) -> None:
    """Feed ``tensors`` into a hashlib ``digest``, in name order: each name, dtype, shape and the raw bytes."""
    for name, tensor in sorted(tensors.items()):
        flat = tensor.detach().cpu().contiguous().view(-1)
        digest.update(f"\0{name}|{flat.dtype}|{list(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())


def network_digest(model: nn.Module) -> str:
    """Hex SHA-256 of ``model``'s class name, its ``checkpoint_config`` (as :func:`mimicfast.models.load` sets it)
    and its state dict."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update(json.dumps(getattr(model, "checkpoint_config", None), sort_keys=True, default=repr).encode())
    update_with_tensors(digest, model.state_dict())
    return digest.hexdigest()
