"""The one loader: every checkpoint format mimicfast reads becomes a ready network; nothing in a file is executed.

=============================  ===========================================================================
file                           how it is read
=============================  ===========================================================================
``*.pkl`` / ``*.pickle``       EDM network pickle, through :mod:`mimicfast.models.edm_pickle` (allow-list)
``*.pt`` ``*.pth`` ...         ``torch.load(weights_only=True)`` state dict; guided-diffusion configs are
                               auto-detected from keys and shapes, EDM needs a config
``*.safetensors``              safetensors state dict + config (``mimicfast convert`` output)
a directory                    diffusers ``UNet2DModel`` + scheduler (optional extra ``[diffusers]``)
=============================  ===========================================================================

A config is a name from :data:`~mimicfast.models.configs.GD_CONFIGS`, a dict, or a JSON file; when none is given,
``<stem>.json`` beside the checkpoint is used if it exists (formats: :mod:`mimicfast.models.configs`).

What every load guarantees, whatever the file holds:

* files are read through :mod:`mimicfast.safe_read`: regular files only (a FIFO, ``/dev/zero`` or a
  directory is refused before it is opened), bounded sizes, every pickle walked for bounded depth and size
  before it is unpickled, and no pickle can change the loader's own objects;
* configs pass :func:`~mimicfast.models.configs.validate_config` (types, ranges, upper bounds on every size)
  before anything is built, and networks are built on the ``meta`` device (shapes only) until the file's keys
  and shapes match;
* every weight is a dense, CPU, floating-point tensor with finite values (:func:`check_weights`);
* every problem with the file or its config is one :class:`~mimicfast.errors.CheckpointError` naming the file
  and the problem (the CLI exits with status 2); a missing file is a ``FileNotFoundError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.configs import (
    FAMILIES,
    GD_CONFIGS,
    GD_NOISE_SCHEDULES,
    GUIDANCE_SCALE,
    gd_name_and_kwargs,
    split_guidance_scales,
    validate_config,
)
from mimicfast.models.edm import edm_network
from mimicfast.models.edm_pickle import (
    PICKLE_SUFFIXES,
    PersistedObject,
    persisted_init_kwargs,
    persisted_tensors,
    read_edm_pickle,
)
from mimicfast.models.edm_precond import PRECOND_CLASSES
from mimicfast.models.guided_diffusion import GuidedDiffusionUNet, guided_diffusion_unet
from mimicfast.models.state_dict_file import (
    STATE_DICT_SUFFIXES,
    load_state_dict_file,
    one_line_errors,
    read_state_dict,
)
from mimicfast.models.weight_checks import build_on_meta, check_weights, short, state_dict_mismatch
from mimicfast.safe_read import MAX_CHECKPOINT_BYTES, open_regular, read_json
from mimicfast.schedules import cosine_betas

__all__ = [
    "FAMILIES",
    "GD_CONFIGS",
    "GD_NOISE_SCHEDULES",
    "check_weights",
    "load",
    "load_edm_pickle",
    "load_guided_diffusion",
    "load_state_dict_file",
    "matching_gd_configs",
    "resolve_config",
    "with_guidance_scales",
    "sidecar_config_path",
    "state_dict_mismatch",
]

_GD_MARKER = "input_blocks.0.0.weight"  # first conv of every guided-diffusion UNetModel
_EDM_MARKER = "model.map_layer0.weight"  # mapping network of every EDM SongUNet/DhariwalUNet


def sidecar_config_path(checkpoint: str | PathLike[str]) -> Path:
    """``<stem>.json`` beside a checkpoint: where :func:`load` looks for its config."""
    return Path(checkpoint).with_suffix(".json")


@one_line_errors
def load(path: str | PathLike[str], config: str | Mapping[str, Any] | PathLike[str] | None = None) -> nn.Module:
    """Load any supported checkpoint (see the module docstring) into a ready mimicfast network.

    Args:
        path: checkpoint file (``.pkl``, ``.pt``/``.pth``/``.bin``/``.ckpt``, ``.safetensors``) or a diffusers
            model directory.
        config: None (auto-detect / ``<stem>.json``), a guided-diffusion config name, a config dict, or the
            path of a JSON config file. EDM ``.pkl`` files record their own configuration and take none.

    Returns:
        The network in eval mode with ``requires_grad=False`` on every parameter, on the CPU. Its
        ``denoiser_kind`` tells :func:`mimicfast.sampling.as_denoiser` how to use it, and its
        ``checkpoint_config`` attribute holds the JSON-able config it was built from (used by
        ``mimicfast convert``).

    Raises:
        FileNotFoundError: no such file or directory.
        CheckpointError: unreadable, truncated, refused or hostile file (see the module docstring); a config
            with invalid values; keys/shapes that match no known configuration or not the given one (the message
            names the offending keys); NaN/Inf or non-floating weights.
        InputError: an unknown config name, a config argument of the wrong type, a config for an EDM ``.pkl``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        from mimicfast.models.diffusers_interop import load_diffusers

        return load_diffusers(path)
    suffix = path.suffix.lower()
    if suffix not in (*PICKLE_SUFFIXES, *STATE_DICT_SUFFIXES, ".safetensors"):
        raise CheckpointError(f"{path}: unknown checkpoint suffix {suffix!r}; expected a diffusers folder or one of "
                              f"{', '.join((*STATE_DICT_SUFFIXES, '.safetensors', *PICKLE_SUFFIXES))}")
    if suffix in PICKLE_SUFFIXES:
        if config is not None:
            raise InputError(f"{path}: an EDM .pkl records its own configuration; do not pass a config")
        model = load_edm_pickle(path)
        return _finish(model, {"family": "edm", "precond_class": model.precond_class, **model.init_kwargs})

    cfg = resolve_config(path, config)
    if cfg is None:
        return _autodetect(path)
    scales = cfg.pop(GUIDANCE_SCALE, {})
    if cfg["family"] == "guided_diffusion":
        return with_guidance_scales(_finish(load_guided_diffusion(path, cfg), cfg), scales)
    return with_guidance_scales(_load_edm_state_dict(path, cfg), scales)


def with_guidance_scales(model: nn.Module, scales: Mapping[str, float]) -> nn.Module:
    """``model`` with the guidance scales its config declares as ``model.guidance_scales`` (preset name -> scale,
    read by :func:`mimicfast.purify_options.resolve_preset`); none declared leaves the model as it is."""
    if scales:
        model.guidance_scales = dict(scales)
    return model


@one_line_errors
def resolve_config(path: str | PathLike[str], config: Any) -> dict[str, Any] | None:
    """Turn ``config`` (or, when None, the sidecar ``<stem>.json`` of checkpoint ``path``) into a validated config
    dict (:func:`~mimicfast.models.configs.validate_config`, plus the checked
    :data:`~mimicfast.models.configs.GUIDANCE_SCALE` when it declares one); None means auto-detect from the file.

    Raises:
        InputError: an unknown config name or a config of the wrong type.
        CheckpointError: an unreadable, oversized or too deeply nested JSON file; invalid values.
    """
    if config is None:
        sidecar = sidecar_config_path(path)
        if not sidecar.exists():
            return None
        config, source = read_json(sidecar), f"config {sidecar}"
    elif isinstance(config, str) and config in GD_CONFIGS:
        return {"family": "guided_diffusion", "config": config}
    elif isinstance(config, str | PathLike):
        file = Path(config)
        if file.suffix.lower() != ".json" or not file.exists():
            raise InputError(
                f"unknown config {str(config)!r}: neither a guided-diffusion config name "
                f"({', '.join(GD_CONFIGS)}) nor an existing .json file"
            )
        config, source = read_json(file), f"config {file}"
    elif isinstance(config, Mapping):
        source = "config"
    else:
        raise InputError(f"config must be a name, a dict or a .json path, got {type(config).__name__}")
    try:
        config, scales = split_guidance_scales(config)
        return {**validate_config(config), **({GUIDANCE_SCALE: scales} if scales else {})}
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _gd_on_meta(kwargs: dict[str, Any], name: str) -> GuidedDiffusionUNet:
    return build_on_meta(lambda: guided_diffusion_unet(**kwargs), f"guided-diffusion {name!r}")


@functools.cache
def _named_gd_shapes(name: str) -> dict[str, torch.Size]:
    """Key -> shape of a named config's state dict (built once per process, on the meta device)."""
    return {k: v.shape for k, v in _gd_on_meta(GD_CONFIGS[name], name).state_dict().items()}


def matching_gd_configs(sd: Mapping[str, Tensor]) -> list[str]:
    """Names of the GD_CONFIGS whose keys and shapes ``sd`` matches exactly."""
    return [name for name in GD_CONFIGS if state_dict_mismatch(_named_gd_shapes(name), sd) is None]


@one_line_errors
def load_guided_diffusion(
    path: str | PathLike[str],
    config: str | Mapping[str, Any],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> GuidedDiffusionUNet:
    """Load a guided-diffusion checkpoint strictly into a :class:`GuidedDiffusionUNet`.

    Keys and shapes are checked against the architecture (built on the ``meta`` device, so a mismatching 2 GB
    checkpoint costs no extra memory) before any weight is allocated.

    Args:
        path: ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file (see :func:`load_state_dict_file`).
        config: a name in :data:`GD_CONFIGS` (e.g. ``"imagenet256-uncond"``), a dict of ``create_model`` kwargs,
            or a config dict as :func:`load` takes (``{"family": "guided_diffusion", ...}``).
        dtype: cast every parameter to this floating dtype; None keeps the config's dtypes (float32, or the
            mixed float16 torso of ``use_fp16=True``).
        device: where the weights live (default CPU).

    Returns:
        The network in eval mode with ``requires_grad=False`` on every parameter.

    Raises:
        CheckpointError: unreadable or refused file, invalid config values, or keys/shapes that do not match the
            config (the message names the config, the first few offending keys, and any named config the file
            does match).
        InputError: unknown config name, or a non-floating ``dtype``.
    """
    name, kwargs = gd_name_and_kwargs(config)
    if dtype is not None and not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point dtype, got {dtype}")
    try:
        model = _gd_on_meta(kwargs, name)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    sd = read_state_dict(Path(path))
    problem = state_dict_mismatch(model, sd)
    if problem is not None:
        matches = [m for m in matching_gd_configs(sd) if m != name]
        hint = f"; the file matches config {', '.join(repr(m) for m in matches)}" if matches else ""
        raise CheckpointError(f"{path}: checkpoint does not match config {name!r}: {problem}{hint}")
    check_weights(sd, str(path))
    if dtype is not None:
        model = model.to(dtype)
    model = model.to_empty(device=device if device is not None else "cpu")
    model.load_state_dict(sd, strict=True)
    if GD_NOISE_SCHEDULES.get(name) == "cosine":
        # Not in the state dict: tells mimicfast.sampling.as_denoiser which schedule the model was trained with.
        model.register_buffer("betas", cosine_betas(), persistent=False)
    return model.eval().requires_grad_(False)


def _autodetect(path: Path) -> nn.Module:
    sd = read_state_dict(path)
    if _GD_MARKER in sd:
        names = matching_gd_configs(sd)
        if not names:
            raise CheckpointError(
                f"{path}: a guided-diffusion state dict that matches none of the known configs "
                f"({', '.join(GD_CONFIGS)}); pass its create_model kwargs as a config dict or "
                f"put them in {sidecar_config_path(path).name}"
            )
        return _finish(load_guided_diffusion(path, names[0]), {"family": "guided_diffusion", "config": names[0]})
    if _EDM_MARKER in sd:
        raise CheckpointError(
            f"{path}: an EDM state dict does not say its architecture; pass a config "
            '({"family": "edm", "precond_class": ..., <kwargs>}) or put it in '
            f"{sidecar_config_path(path).name}"
        )
    raise CheckpointError(
        f"{path}: state dict of an unknown architecture (neither {_GD_MARKER!r} nor "
        f"{_EDM_MARKER!r} present; first keys: {', '.join(short(k) for k in list(sd)[:3])})"
    )


def _edm_on_meta(cfg: dict[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in cfg.items() if k not in ("family", "precond_class")}
    return build_on_meta(lambda: edm_network(cfg["precond_class"], **kwargs), f"EDM {cfg['precond_class']}")


def _load_edm_state_dict(path: Path, cfg: dict[str, Any]) -> nn.Module:
    try:
        net = _edm_on_meta(cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    sd = read_state_dict(path)
    problem = state_dict_mismatch(net, sd)
    if problem is not None:
        raise CheckpointError(f"{path}: checkpoint does not match its EDM {cfg['precond_class']} config: {problem}")
    check_weights(sd, str(path))
    net.load_state_dict(dict(sd), strict=True, assign=True)
    return _finish(net, cfg)


@one_line_errors
def load_edm_pickle(path: str | PathLike[str], key: str = "ema") -> nn.Module:
    """Load the network of an EDM ``.pkl`` (e.g. ``edm-cifar10-32x32-uncond-vp.pkl``) without running its code.

    The recorded constructor arguments pass the config validator before the network is built (on the meta
    device); the persisted module tree must match it class by class; the tensors pass :func:`check_weights`.

    Args:
        path: the pickle file.
        key: which entry of the pickled dict holds the network (EDM saves the EMA weights as ``"ema"``); a file
            whose top level is the network itself is accepted too.

    Returns:
        mimicfast's EDM preconditioned network (``denoiser_kind == "x0_sigma"``), eval mode, frozen parameters,
        with ``precond_class`` and ``init_kwargs`` set.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a global outside the allow-list (named), a hostile or truncated/corrupt stream, no
            network under ``key``, an unsupported class, invalid constructor arguments, or tensors that do not
            match the recorded configuration.
    """
    path = Path(path)
    try:
        with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES) as f:
            top = read_edm_pickle(f)
        obj = top.get(key) if isinstance(top, Mapping) else top
        if not isinstance(obj, PersistedObject):
            what = f"keys [{', '.join(sorted(map(short, top)))}]" if isinstance(top, Mapping) else type(top).__name__
            raise CheckpointError(f"no EDM network under {key!r} (found {what})")
        return _network_from_persisted(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _network_from_persisted(obj: PersistedObject) -> nn.Module:
    if obj.class_name not in PRECOND_CLASSES:
        raise CheckpointError(
            f"pickled network class {obj.class_name!r} is not supported; mimicfast rebuilds "
            f"{', '.join(sorted(PRECOND_CLASSES))}"
        )
    try:
        cfg = validate_config({"family": "edm", "precond_class": obj.class_name, **persisted_init_kwargs(obj)})
    except CheckpointError as e:
        raise CheckpointError(f"pickled {obj.class_name} constructor arguments: {e}") from None
    net = _edm_on_meta(cfg)
    found = persisted_tensors(obj, net)
    problem = state_dict_mismatch(net, found)
    if problem:
        raise CheckpointError(f"pickled {obj.class_name} tensors do not match its configuration: {problem}")
    check_weights(found, f"pickled {obj.class_name}")
    net.load_state_dict(found, strict=True, assign=True)
    return net.eval().requires_grad_(False)


def _finish(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    # JSON has no infinity: sigma_max=inf is EDMPrecond's default, so it is left out rather than written.
    model.checkpoint_config = {
        k: v for k, v in cfg.items() if not (k == "sigma_max" and isinstance(v, float) and math.isinf(v))
    }
    return model.eval().requires_grad_(False)
