"""openai/guided-diffusion ``UNetModel``, reimplemented so that its public checkpoints load strictly.

The module tree (attribute names, ``nn.Sequential`` indices, parameter shapes and registration order) mirrors
guided-diffusion's ``guided_diffusion/unet.py`` so ``state_dict()`` keys are identical, e.g. the 566 entries of
``256x256_diffusion_uncond.pt``. The forward pass computes the same function, with three deliberate differences
that change no value beyond floating-point rounding:

* attention is ``F.scaled_dot_product_attention``; guided-diffusion scales q and k by ``ch**-1/4`` each, which is
  the same as sdpa's default ``1/sqrt(ch)`` on the logits;
* the attention block is not wrapped in guided-diffusion's hand-written gradient checkpoint (which it applies
  unconditionally and which breaks input-VJPs when parameters are frozen); ``use_checkpoint=True`` uses
  ``torch.utils.checkpoint`` on res- and attention blocks instead;
* GroupNorm and the sinusoidal timestep embedding compute in ``max(float32, dtype)`` rather than always float32,
  so a float64 copy of the model is float64 throughout (the float32 path is unchanged).

``denoiser_kind = "eps_timestep"``: ``forward(x_t, t)`` predicts eps (and, with ``learn_sigma``, the learned
variance interpolation ``v`` in channels C..2C) for VP inputs ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_unary
from torch.utils.checkpoint import checkpoint

from mimicfast.errors import InputError
from mimicfast.fast.input_vjp import register_fp32_group_norm

__all__ = ["GuidedDiffusionUNet", "guided_diffusion_unet", "timestep_embedding"]

# create_model's channel multipliers when channel_mult="" (guided_diffusion/script_util.py).
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
_NUM_CLASSES = 1000  # create_model's class_cond=True means ImageNet's 1000 classes


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 tensors, float64 for float64 ones."""
    return torch.promote_types(dtype, torch.float32)


def timestep_embedding(timesteps: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]``, ``f_i = 10000**(-i/half)``, ``i < half = dim // 2``.

    Args:
        timesteps: [N] int or float timesteps (fractional values allowed).
        dim: embedding width; an odd width gets a zero last column.
        dtype: float32 (guided-diffusion's precision) or float64.

    Returns:
        [N, dim] tensor of ``dtype``.
    """
    half = dim // 2
    # Same operation order as guided-diffusion so that the float32 result is bit-identical.
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=dtype, device=timesteps.device) / half)
    args = timesteps[:, None].to(dtype) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


@register_fp32_group_norm
def group_norm32(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Group normalisation computed in at least float32, returned in ``x``'s dtype (guided-diffusion's GroupNorm32).

    Overridable by a ``TorchFunctionMode`` (:class:`mimicfast.fast.input_vjp.input_only_vjp` keeps a 16-bit ``x``
    for backward instead of its float32 copy).
    """
    if has_torch_function_unary(x):
        return handle_torch_function(group_norm32, (x,), x, num_groups, weight, bias, eps)
    cdt = _compute_dtype(x.dtype)
    w = None if weight is None else weight.to(cdt)
    b = None if bias is None else bias.to(cdt)
    return F.group_norm(x.to(cdt), num_groups, w, b, eps).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) computed in at least float32, returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return group_norm32(x, self.num_groups, self.weight, self.bias, self.eps)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    """Nearest x2 upsampling, then a 3x3 conv (key ``conv``) when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv when ``use_conv``, else 2x2 average pooling (submodule ``op``; only the conv has weights)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling (``up`` / ``down``).

    ``h = conv(SiLU(norm(x)))``; with ``use_scale_shift_norm`` the embedding gives (scale, shift) and
    ``h = conv(dropout(SiLU(norm(h) * (1 + scale) + shift)))``, otherwise it is added before the second norm.
    Output ``skip(x) + h``; skip is a 1x1 conv only when the channel count changes.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            # Resample between the activation and the conv, as guided-diffusion does.
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        lin = self.emb_layers[1]
        emb_out = self.emb_layers(emb.to(lin.weight.dtype)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: ``x + proj_out(attn(qkv(norm(x))))``.

    ``qkv`` / ``proj_out`` are Conv1d ([3C, C, 1] / [C, C, 1]). The qkv channels are laid out as
    (head, {q,k,v}, ch) in the legacy order and ({q,k,v}, head, ch) with ``use_new_attention_order``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise InputError(
                    f"attention channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise InputError(f"attention channels {channels} not divisible by num_heads {self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.new_order = use_new_attention_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        length = x.shape[-1]
        heads, ch = self.num_heads, c // self.num_heads
        # [B, T, 3C], one copy: the fused attention kernels (flash, memory-efficient, cuDNN) need the head
        # dimension at stride 1; with q, k, v as transposed views of [B, 3C, T] sdpa falls back to the math
        # kernel, which materialises [B, heads, T, T] scores.
        qkv = self.qkv(self.norm(x)).transpose(1, 2).contiguous()
        if self.new_order:  # channels of qkv: (qkv, head, ch)
            qkv = qkv.reshape(b, length, 3, heads, ch).permute(2, 0, 3, 1, 4)
        else:  # channels of qkv: (head, qkv, ch)
            qkv = qkv.reshape(b, length, heads, 3, ch).permute(3, 0, 2, 1, 4)
        # q, k, v: [B, heads, T, ch]; sdpa scales logits by 1/sqrt(ch).
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class _EmbSequential(nn.Sequential):
    """``nn.Sequential`` that also hands the time embedding to its ResBlocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedDiffusionUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (2-D), same constructor arguments and ``state_dict`` layout.

    Args:
        image_size: training resolution (informational; any size divisible by ``2**(len(channel_mult)-1)`` runs).
        in_channels: image channels C.
        model_channels: base width.
        out_channels: C (eps) or 2C (eps and learned-variance ``v``).
        num_res_blocks: res blocks per level.
        attention_resolutions: *downsample factors* ``ds`` with attention (create_model passes
            ``image_size // res``).
        dropout: dropout probability inside res blocks (inactive in eval mode).
        channel_mult: width multipliers per level.
        conv_resample: learned 3x3 convs for up/downsampling (when ``resblock_updown`` is False).
        num_classes: class count for ``label_emb``, or None.
        use_checkpoint: gradient checkpointing (torch.utils.checkpoint) in res and attention blocks.
        use_fp16: store the convs of input/middle/output blocks in float16, like ``convert_to_fp16()``;
            time embedding, norms, Linear layers and the output head stay float32.
        num_heads, num_head_channels, num_heads_upsample: attention heads (``num_head_channels`` overrides
            ``num_heads`` when not -1; ``num_heads_upsample`` -1 means ``num_heads``).
        use_scale_shift_norm: FiLM-style (scale, shift) conditioning.
        resblock_updown: resample with ResBlocks instead of Upsample / Downsample.
        use_new_attention_order: split qkv before heads.
    """

    denoiser_kind = "eps_timestep"

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.learn_sigma = out_channels == 2 * in_channels
        self.num_classes = num_classes
        self.channel_mult = tuple(channel_mult)
        emb_dim = model_channels * 4

        def res(ch_in: int, ch_out: int | None = None, **updown: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, use_checkpoint, **updown)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_checkpoint, use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([_EmbSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(_EmbSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(_EmbSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = _EmbSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(_EmbSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))
        if use_fp16:
            self._convert_torso_to_fp16()

    def _convert_torso_to_fp16(self) -> None:
        """What guided-diffusion's ``convert_to_fp16()`` does: only the torso's conv weights become half."""
        for torso in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in torso.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()

    def forward(self, x: Tensor, timesteps: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Predict eps (and ``v`` when ``learn_sigma``) for a noisy batch.

        Args:
            x: [N, in_channels, H, W] float VP input ``x_t``; H, W divisible by ``2**(len(channel_mult)-1)``.
            timesteps: [N] (or scalar) timestep indices on the model's 1000-step training grid; fractional ok.
            y: [N] int64 class labels, required iff the model is class-conditional.

        Returns:
            [N, out_channels, H, W] in ``x.dtype``: channels ``:C`` eps, ``C:`` the variance interpolation ``v``.
        """
        self._check_inputs(x, y)
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if timesteps.shape != (x.shape[0],):
            raise InputError(f"timesteps must have shape [{x.shape[0]}] or be a scalar, got {tuple(timesteps.shape)}")

        emb_dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(timesteps, self.model_channels, _compute_dtype(emb_dtype))
        emb = self.time_embed(t_emb.to(emb_dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)

        h = x.to(self.input_blocks[0][0].weight.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(self.out[2].weight.dtype)).to(x.dtype)

    def _check_inputs(self, x: Tensor, y: Tensor | None) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"x must be [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor, got {x.dtype}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise InputError(f"image height and width must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        if (y is None) != (self.num_classes is None):
            need = "requires class labels y" if y is None else "is unconditional and takes no y"
            raise InputError(f"this model {need}")
        if y is not None and y.shape != (x.shape[0],):
            raise InputError(f"y must have shape [{x.shape[0]}], got {tuple(y.shape)}")


def _parse_ints(value: str | Sequence[float], name: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            raise InputError(f"{name} must be comma-separated integers, got {value!r}") from None
    return tuple(value)


def guided_diffusion_unet(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: str | Sequence[float] = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str | Sequence[int] = "16",
    num_heads: int = 1,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = False,
    dropout: float = 0.0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
    in_channels: int = 3,
) -> GuidedDiffusionUNet:
    """Build a :class:`GuidedDiffusionUNet` from guided-diffusion ``create_model`` keyword arguments.

    Same arguments and defaults as ``guided_diffusion.script_util.create_model`` plus ``in_channels``
    (create_model hard-codes 3). ``channel_mult=""`` picks create_model's per-size default (64, 128, 256, 512);
    ``attention_resolutions`` are *resolutions* (e.g. ``"32,16,8"``) turned into downsample factors
    ``image_size // res``. ``learn_sigma`` doubles the output channels; ``class_cond`` adds a 1000-class
    ``label_emb``. ``use_fp16=True`` gives the model ``create_model(...)`` + ``convert_to_fp16()`` produces.
    """
    if channel_mult == "":
        if image_size not in _DEFAULT_CHANNEL_MULT:
            raise InputError(
                f"no default channel_mult for image_size {image_size}; pass channel_mult "
                f"(defaults exist for {sorted(_DEFAULT_CHANNEL_MULT)})"
            )
        mult = _DEFAULT_CHANNEL_MULT[image_size]
    else:
        mult = _parse_ints(channel_mult, "channel_mult")
    resolutions = _parse_ints(attention_resolutions, "attention_resolutions")
    return GuidedDiffusionUNet(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=2 * in_channels if learn_sigma else in_channels,
        num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(image_size // int(r) for r in resolutions),
        dropout=dropout,
        channel_mult=mult,
        num_classes=_NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )
