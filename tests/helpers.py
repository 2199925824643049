"""Small deterministic networks for fast sampler tests (no fixtures needed)."""

from __future__ import annotations

import torch
from torch import nn


class TinyEpsNet(nn.Module):
    """A tiny time-conditioned eps-prediction net in guided-diffusion's interface (``model(x_t, t)``).

    With ``learn_sigma`` it returns ``[eps, v]`` (2C channels), ``v`` in (-1, 1) like guided-diffusion's.
    """

    denoiser_kind = "eps_timestep"

    def __init__(self, channels: int = 3, image_size: int = 8, learn_sigma: bool = False, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.in_channels = channels
        self.image_size = image_size
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * channels if learn_sigma else channels
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, self.out_channels, 3, padding=1)
        self.freq = nn.Parameter(torch.randn(8, generator=gen) * 0.01, requires_grad=False)
        for p in (*self.conv1.parameters(), *self.conv2.parameters()):
            p.data = torch.randn(p.shape, generator=gen) * 0.3
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = torch.sin(t[:, None].to(x.dtype) * self.freq[None, :].to(x.dtype))
        h = torch.tanh(self.conv1(x) + emb[:, :, None, None])
        out = self.conv2(h)
        if self.learn_sigma:
            c = self.in_channels
            out = torch.cat([out[:, :c], torch.tanh(out[:, c:])], dim=1)
        return out
