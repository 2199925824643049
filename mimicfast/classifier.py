"""The architecture of the bundled Fashion-MNIST classifier, a small VGG-style CNN (training: mimicfast.train).

Input ``[N, 1, 32, 32]`` float in [0, 1] (Fashion-MNIST zero-padded to 32x32), output logits ``[N, 10]``.
It takes raw [0, 1] pixels, so an attack's epsilon is in the same units as the purifier's input.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FashionCNN"]

# Per-pixel mean and std of the padded 32x32 training images; fixed so the network owns its scaling.
_MEAN, _STD = 0.2189, 0.3317


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionCNN(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4 pixels) and a linear head; ``width`` channels first."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.width = width
        self.features = nn.Sequential(_block(1, width), _block(width, 2 * width), _block(2 * width, 4 * width))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 10]`` of images ``[N, 1, 32, 32]`` in [0, 1]."""
        return self.head(self.features((x - _MEAN) / _STD))
