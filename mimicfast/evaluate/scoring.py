"""Top-1 accuracy of a classifier on a batch of images."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def accuracy(classifier: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 500) -> float:
    """Top-1 accuracy of ``classifier`` (an ``nn.Module`` is put in eval mode) on ``x`` [N, C, H, W], ``y`` [N]."""
    if isinstance(classifier, nn.Module):
        classifier.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += (classifier(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / x.shape[0]
