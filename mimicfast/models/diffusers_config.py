"""The configs of a diffusers model directory, checked before anything is built from them.

A ``UNet2DModel`` ``config.json`` becomes constructor arguments, so every key must be one mimicfast knows, with
its type and range checked and every size bounded like the other families' configs
(:mod:`mimicfast.models.configs`); keys starting with ``_`` are diffusers' metadata (``_class_name``,
``_diffusers_version``) and are not arguments. Only what a DDPM-style eps/v/x0 network with positional timestep
embeddings needs is accepted: mimicfast feeds the network DDPM timestep indices and no class labels.

Of a ``scheduler_config.json`` only the training noise schedule and the network's target are read (mimicfast does
its own sampling, so the sampler settings of whichever scheduler class saved it do not matter); those keys are
checked, the others ignored. Problems are one :class:`~mimicfast.errors.CheckpointError` line naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mimicfast.errors import CheckpointError
from mimicfast.models.configs import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_IMAGE_CHANNELS,
    MAX_LEVELS,
    MAX_RESOLUTION,
    Check,
    apply_schema,
    bad_value,
    boolean,
    float_in,
    int_in,
    list_of,
    one_of,
)

__all__ = ["MAX_TIMESTEPS", "PREDICTIONS", "validate_scheduler_config", "validate_unet_config"]

PREDICTIONS = ("epsilon", "v_prediction", "sample")
# Public DDPM models train with 1000 steps; the scheduler builds a table of this length at load.
MAX_TIMESTEPS = 100_000


def _none_or(check: Check) -> Check:
    def checked(key: str, value: Any) -> Any:
        return None if value is None else check(key, value)

    return checked


def _null(what: str) -> Check:
    def check(key: str, value: Any) -> None:
        if value is not None:
            raise CheckpointError(f"{key} {value!r:.80}: {what}")

    return check


def _sample_size(key: str, value: Any) -> int:
    if isinstance(value, list | tuple):
        sizes = list_of(int_in(1, MAX_RESOLUTION), 1, 2)(key, value)
        if len(set(sizes)) != 1:
            raise CheckpointError(f"only square diffusers UNets are supported, got {key} {sizes}")
        return sizes[0]
    return int_in(1, MAX_RESOLUTION)(key, value)


_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
_UNET_SCHEMA: dict[str, Check] = {
    "sample_size": _sample_size,
    "in_channels": int_in(1, MAX_IMAGE_CHANNELS),
    "out_channels": int_in(1, 2 * MAX_IMAGE_CHANNELS),
    "center_input_sample": boolean,
    "time_embedding_type": one_of("positional"),  # "fourier"/"learned" take noise levels or integer indices
    "time_embedding_dim": _none_or(int_in(1, 4 * MAX_CHANNELS)),
    "freq_shift": float_in(-1e3, 1e3),
    "flip_sin_to_cos": boolean,
    "down_block_types": list_of(one_of(*_DOWN_BLOCKS), 1, MAX_LEVELS),
    "mid_block_type": _none_or(one_of("UNetMidBlock2D")),
    "up_block_types": list_of(one_of(*_UP_BLOCKS), 1, MAX_LEVELS),
    "block_out_channels": list_of(int_in(1, MAX_CHANNELS), 1, MAX_LEVELS),
    "layers_per_block": int_in(1, MAX_BLOCKS),
    "mid_block_scale_factor": float_in(0, 1e3, lo_open=True),
    "downsample_padding": int_in(0, 16),
    "downsample_type": one_of("conv", "resnet"),
    "upsample_type": one_of("conv", "resnet"),
    "dropout": float_in(0, 1, hi_open=True),
    "act_fn": one_of("silu", "swish", "mish", "gelu", "relu"),
    "attention_head_dim": _none_or(int_in(1, MAX_CHANNELS)),
    "norm_num_groups": _none_or(int_in(1, MAX_CHANNELS)),
    "attn_norm_num_groups": _none_or(int_in(1, MAX_CHANNELS)),
    "norm_eps": float_in(0, 1, lo_open=True),
    "resnet_time_scale_shift": one_of("default", "scale_shift"),
    "add_attention": boolean,
    "class_embed_type": _null("class-conditional diffusers UNets are not supported (mimicfast purifies without "
                              "labels)"),
    "num_class_embeds": _null("class-conditional diffusers UNets are not supported (mimicfast purifies without "
                              "labels)"),
    "num_train_timesteps": _none_or(int_in(1, MAX_TIMESTEPS)),
}


def validate_unet_config(config: Any) -> dict[str, Any]:
    """The ``UNet2DModel`` constructor arguments of a ``config.json`` (module docstring), checked.

    Raises:
        CheckpointError: not a UNet2DModel config, an unknown key, a value of the wrong type or range, block
            lists of different lengths, or widths the normalisation groups do not divide.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"a UNet config must be a JSON object, got {type(config).__name__}")
    found = config.get("_class_name")
    if found != "UNet2DModel":
        raise CheckpointError(f"_class_name {str(found)[:80]!r}: mimicfast supports UNet2DModel")
    kwargs = {k: v for k, v in config.items() if not (isinstance(k, str) and k.startswith("_"))}
    if "sample_size" not in kwargs:
        raise CheckpointError("UNet2DModel config lacks sample_size")
    out = apply_schema(_UNET_SCHEMA, kwargs, "UNet2DModel config")
    levels = {k: len(out[k]) for k in ("down_block_types", "up_block_types", "block_out_channels") if k in out}
    if len(set(levels.values())) > 1:
        raise CheckpointError(f"block lists of different lengths: {levels}")
    groups = [g for g in (out.get("norm_num_groups", 32), out.get("attn_norm_num_groups")) if g is not None]
    for width in out.get("block_out_channels", (224, 448, 672, 896)):
        for g in groups:
            if width % g:
                raise CheckpointError(f"block width {width} is not a multiple of the {g} normalisation groups")
    return kwargs


_SCHEDULER_SCHEMA: dict[str, Check] = {
    "num_train_timesteps": int_in(1, MAX_TIMESTEPS),
    "beta_start": float_in(0, 1, lo_open=True, hi_open=True),
    "beta_end": float_in(0, 1, lo_open=True, hi_open=True),
    "beta_schedule": one_of("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"),
    "trained_betas": _none_or(list_of(float_in(0, 1, lo_open=True, hi_open=True), 1, MAX_TIMESTEPS)),
    "prediction_type": one_of(*PREDICTIONS),
    "variance_type": one_of("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                            "learned_range"),
    "rescale_betas_zero_snr": boolean,
}


def validate_scheduler_config(config: Any) -> dict[str, Any]:
    """The training-schedule keys of a ``scheduler_config.json`` (module docstring), checked: arguments for
    ``DDPMScheduler``.

    Raises:
        CheckpointError: not a JSON object, or a value of the wrong type or range.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"a scheduler config must be a JSON object, got {type(config).__name__}")
    used = {k: config[k] for k in _SCHEDULER_SCHEMA if k in config}
    apply_schema(_SCHEDULER_SCHEMA, used, "scheduler config")
    betas = used.get("trained_betas")
    if betas is not None and len(betas) != used.get("num_train_timesteps", 1000):
        raise bad_value("trained_betas", betas, f"a list of num_train_timesteps ({used.get('num_train_timesteps', 1000)}) "
                        "values")
    return used
