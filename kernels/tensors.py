"""Dtype and layout rules shared by every backend of the guidance ops (torch only: importing this never imports
Triton).

Arithmetic is float32 for fp16 / bf16 / fp32 data and float64 for float64 data (docs/DESIGN.md §4). Outputs
keep their input's memory format: channels_last in, channels_last out.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype (and the dtype of ``l1_residual``'s output) for data of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """Layout of an op's output: channels_last when ``t`` is laid out that way (and not also contiguous)."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(shape: tuple[int, ...] | torch.Size, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised output of ``shape`` and ``dtype`` on ``like``'s device in ``like``'s layout."""
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format(like))
