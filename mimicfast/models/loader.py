"""One loader for every checkpoint format mimicfast reads; nothing in a file is ever executed.

=============================  ===========================================================================
file                           how it is read
=============================  ===========================================================================
``*.pkl`` / ``*.pickle``       EDM network pickle, through :mod:`mimicfast.models.edm_pickle` (allow-list)
``*.pt`` ``*.pth`` ...         ``torch.load(weights_only=True)`` state dict; guided-diffusion configs are
                               auto-detected from keys and shapes, EDM needs a config
``*.safetensors``              safetensors state dict + config (``mimicfast convert`` output)
a directory                    diffusers ``UNet2DModel`` + scheduler (optional extra ``[diffusers]``)
=============================  ===========================================================================

A config is a name from :data:`~mimicfast.models.loading.GD_CONFIGS`, a dict, or a JSON file; when none is
given, ``<stem>.json`` beside the checkpoint is used if it exists. Config dicts name their family (inferred
when absent from ``precond_class`` or ``image_size`` + ``num_channels``):
``{"family": "guided_diffusion", "config": "imagenet256-uncond"}``,
``{"family": "guided_diffusion", <create_model kwargs>}`` or
``{"family": "edm", "precond_class": "EDMPrecond", <EDM constructor kwargs>}`` (the kwargs may also sit under a
``"kwargs"`` key, as in the parity fixtures' ``edm_*_kwargs.json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.edm import edm_network
from mimicfast.models.edm_pickle import PICKLE_SUFFIXES, load_edm_pickle
from mimicfast.models.loading import (
    GD_CONFIGS,
    load_guided_diffusion,
    load_state_dict_file,
    matching_gd_configs,
    state_dict_mismatch,
)

__all__ = ["FAMILIES", "load", "sidecar_config_path"]

FAMILIES = ("guided_diffusion", "edm")
_GD_MARKER = "input_blocks.0.0.weight"  # first conv of every guided-diffusion UNetModel
_EDM_MARKER = "model.map_layer0.weight"  # mapping network of every EDM SongUNet/DhariwalUNet


def sidecar_config_path(checkpoint: str | PathLike[str]) -> Path:
    """``<stem>.json`` beside a checkpoint: where :func:`load` looks for its config."""
    return Path(checkpoint).with_suffix(".json")


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
        CheckpointError: unreadable, truncated or refused file; keys/shapes that match no known configuration
            or not the given one (the message names the offending keys).
        InputError: unknown config name, malformed config.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        from mimicfast.models.diffusers_interop import load_diffusers

        return load_diffusers(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if config is not None:
            raise InputError(f"{path}: an EDM .pkl records its own configuration; do not pass a config")
        model = load_edm_pickle(path)
        return _finish(model, {"family": "edm", "precond_class": model.precond_class, **model.init_kwargs})

    cfg = _resolve_config(path, config)
    if cfg is None:
        return _autodetect(path)
    if cfg["family"] == "guided_diffusion":
        gd = cfg["config"] if "config" in cfg else {k: v for k, v in cfg.items() if k != "family"}
        return _finish(load_guided_diffusion(path, gd), cfg)
    return _load_edm_state_dict(path, load_state_dict_file(path), cfg)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"config {file}: not a readable JSON file ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"config {file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _resolve_config(path: Path, config: Any) -> dict[str, Any] | None:
    """Normalise ``config`` (or the sidecar JSON) to a dict with a valid ``family``; None = auto-detect."""
    source = "config"
    if config is None:
        sidecar = sidecar_config_path(path)
        if not sidecar.is_file():
            return None
        config, source = _read_json(sidecar), f"config {sidecar}"
    elif isinstance(config, str) and config in GD_CONFIGS:
        return {"family": "guided_diffusion", "config": config}
    elif isinstance(config, str | PathLike):
        file = Path(config)
        if file.suffix.lower() != ".json" or not file.is_file():
            raise InputError(
                f"unknown config {str(config)!r}: neither a guided-diffusion config name "
                f"({', '.join(GD_CONFIGS)}) nor an existing .json file"
            )
        config, source = _read_json(file), f"config {file}"
    if not isinstance(config, Mapping):
        raise InputError(f"config must be a name, a dict or a .json path, got {type(config).__name__}")
    cfg = dict(config)
    if "family" not in cfg:  # unambiguous without it: EDM configs name a precond, GD ones an image_size
        if "precond_class" in cfg:
            cfg["family"] = "edm"
        elif "image_size" in cfg and "num_channels" in cfg:
            cfg["family"] = "guided_diffusion"
    if cfg.get("family") not in FAMILIES:
        raise InputError(f"{source}: 'family' must be one of {', '.join(FAMILIES)}, got {cfg.get('family')!r}")
    if cfg["family"] == "edm":
        if isinstance(cfg.get("kwargs"), Mapping):  # fixture layout: {"precond_class", "kwargs": {...}}
            cfg = {"family": "edm", "precond_class": cfg.get("precond_class"), **cfg["kwargs"]}
        if not isinstance(cfg.get("precond_class"), str):
            raise InputError(f"{source}: an EDM config needs 'precond_class' (e.g. \"EDMPrecond\")")
    elif "config" in cfg and cfg["config"] not in GD_CONFIGS:
        raise InputError(f"{source}: unknown guided-diffusion config {cfg['config']!r}; known: {', '.join(GD_CONFIGS)}")
    return cfg


def _autodetect(path: Path) -> nn.Module:
    sd = load_state_dict_file(path)
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
        f"{_EDM_MARKER!r} present; first keys: {', '.join(list(sd)[:3])})"
    )


def _load_edm_state_dict(path: Path, sd: Mapping[str, torch.Tensor], cfg: dict[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in cfg.items() if k not in ("family", "precond_class")}
    try:
        with torch.device("meta"):  # shapes only: the weights come from the file
            net = edm_network(cfg["precond_class"], **kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: invalid EDM config: {e}") from None
    problem = state_dict_mismatch(net, sd)
    if problem is not None:
        raise CheckpointError(f"{path}: checkpoint does not match its EDM {cfg['precond_class']} config: {problem}")
    net.load_state_dict(dict(sd), strict=True, assign=True)
    return _finish(net, cfg)


def _finish(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    # JSON has no infinity: sigma_max=inf is EDMPrecond's default, so it is left out rather than written.
    model.checkpoint_config = {
        k: v for k, v in cfg.items() if not (k == "sigma_max" and isinstance(v, float) and math.isinf(v))
    }
    return model.eval().requires_grad_(False)
