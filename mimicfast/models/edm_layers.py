"""Building blocks of NVlabs/edm's networks (``training/networks.py``), reimplemented.

Every module here reproduces the reference's parameter and buffer names, shapes and registration order, so
``load_state_dict(strict=True)`` accepts a state dict taken from EDM's own modules, and the forward pass computes
the same function. Attention is ``F.scaled_dot_product_attention`` in the input's dtype (EDM upcasts q and k to
float32 for an einsum + softmax; a float64 module therefore computes exact math, the fixtures' "ideal float64"
convention, and the fused kernels accumulate in float32 under 16-bit autocast). The positional-embedding
frequency table is built in float64 for float64 inputs. All ops are out of place so that an input-VJP works
with frozen parameters.

Class names equal EDM's: :mod:`mimicfast.models.edm_pickle` checks a pickled module's class name against them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
    "class_label_input",
    "random_weight",
]


def random_weight(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial weights with EDM's init modes (only relevant for training or random test models).

    ``xavier_*`` scale by ``fan_in + fan_out``, ``kaiming_*`` by ``fan_in``; ``*_uniform`` draws U(-a, a),
    ``*_normal`` draws N(0, s^2), with variance 2/(fan_in+fan_out) (xavier) or 1/fan_in (kaiming).
    """
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}; expected xavier_uniform, xavier_normal, kaiming_uniform "
                     "or kaiming_normal")


def class_label_input(labels: torch.Tensor | None, label_dim: int, label_dropout: float, training: bool,
                      batch: int) -> torch.Tensor:
    """Class labels [N|1, label_dim] for a conditional net; in training, drop whole rows with prob label_dropout."""
    if labels is None:
        raise ValueError(f"this network is class-conditional (label_dim={label_dim}); pass class_labels")
    if training and label_dropout:
        keep = torch.rand([batch, 1], device=labels.device) >= label_dropout
        labels = labels * keep.to(labels.dtype)
    return labels


class Linear(nn.Module):
    """Fully connected layer ``y = x W^T + b``; the weight is cast to the input's dtype (as EDM does)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(random_weight([out_features, in_features], **fans) * init_weight)
        self.bias = (nn.Parameter(random_weight([out_features], **fans) * init_bias)
                     if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


class Conv2d(nn.Module):
    """Square conv with optional 2x up/down-sampling by a separable FIR filter (EDM's ``Conv2d``).

    ``kernel=0`` means no weight: the layer only resamples. Resampling convs own a persistent buffer
    ``resample_filter`` [1, 1, k, k] = outer(f, f) / sum(f)^2; others register it as ``None`` (no state-dict key).
    Upsampling is a depthwise transposed conv (stride 2) with the filter times 4, downsampling a depthwise conv
    (stride 2). ``fused_resample`` pads once for both the weight conv and the resampling (NCSN++ residual aux).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0) -> None:
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(random_weight(shape, **fans) * init_weight) if kernel else None
        self.bias = (nn.Parameter(random_weight([out_channels], **fans) * init_bias)
                     if kernel and bias else None)
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                             padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """GroupNorm with ``min(num_groups, C // min_channels_per_group)`` groups (EDM: 32 and 4)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """EDM's unified U-Net block: (GroupNorm, SiLU, conv) x 2 with embedding conditioning, skip, attention.

    ``adaptive_scale=True`` (ADM): ``h = silu(norm1(h) * (scale + 1) + shift)`` with (scale, shift) =
    chunk(affine(emb)); ``False`` (DDPM++/NCSN++): ``h = silu(norm1(h + affine(emb)))``. The output is
    ``(conv1(h) + skip(x)) * skip_scale``, then with attention ``(proj(attn(norm2(.))) + .) * skip_scale``.
    qkv channels are laid out (head, channel, {q,k,v}) as in EDM.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: dict | None = None, init_zero: dict | None = None,
                 init_attn: dict | None = None) -> None:
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            # A channel-preserving resampling skip has no weight unless resample_proj (SongUNet) asks for one.
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [N, in_channels, H, W], emb: [N or 1, emb_channels] -> [N, out_channels, H', W']."""
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale

        if self.num_heads:
            n, c = x.shape[:2]
            # EDM's qkv channels are (head, ch, qkv). Laid out as [N, heads, T, 3, ch] with one copy, q, k, v
            # are 4-d with the channel dimension at stride 1, as the fused attention kernels require (for
            # transposed views sdpa falls back to the math kernel and materialises the [T, T] scores).
            qkv = self.qkv(self.norm2(x)).reshape(n, self.num_heads, c // self.num_heads, 3, -1)
            q, k, v = qkv.permute(0, 1, 4, 3, 2).contiguous().unbind(3)
            # softmax(q^T k / sqrt(C)) v as one fused kernel; EDM's einsum form computes the same function.
            a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2)
            x = (self.proj(a.reshape(x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x f_i), sin(x f_i)], f_i = (1/max_positions)^(i / (C/2 - endpoint)).

    The frequency table is float32 as in EDM, float64 for float64 input (ideal-f64 convention).
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N] noise labels -> [N, num_channels]."""
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=table_dtype, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)] with a persistent buffer ``freqs`` (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N] noise labels -> [N, num_channels]."""
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
