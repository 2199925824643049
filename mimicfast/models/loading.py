"""Safe checkpoint loading: state-dict files and guided-diffusion networks from named configs.

Nothing here executes code from a file: ``.pt``/``.pth``/``.bin``/``.ckpt`` go through
``torch.load(weights_only=True)`` (memory-mapped when the file is in torch's zip format) and ``.safetensors``
through safetensors. A file that is missing, truncated, corrupt, needs code to unpickle, or holds something other
than ``name -> Tensor`` raises an error that names the file and the problem.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.guided_diffusion import GuidedDiffusionUNet, guided_diffusion_unet
from mimicfast.schedules import cosine_betas

__all__ = [
    "GD_CONFIGS",
    "GD_NOISE_SCHEDULES",
    "load_guided_diffusion",
    "load_state_dict_file",
    "matching_gd_configs",
    "state_dict_mismatch",
]

# Shared by the public ImageNet models: flags from guided-diffusion's README on top of its script defaults
# (model_and_diffusion_defaults: num_heads=4, num_heads_upsample=-1, channel_mult="", ...). use_fp16 is False
# because the released files are float32; pass ``dtype`` (or use_fp16=True in a dict config) to choose.
# Dropout has no parameters and is inactive in eval mode, so it is 0.0 for inference.
_IMAGENET_COMMON: dict[str, Any] = dict(
    learn_sigma=True,
    use_checkpoint=False,
    attention_resolutions="32,16,8",
    num_heads=4,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    dropout=0.0,
    resblock_updown=True,
    use_fp16=False,
    use_new_attention_order=False,
)

GD_CONFIGS: dict[str, dict[str, Any]] = {
    # 256x256_diffusion_uncond.pt, the model DiffPure and the MimicDiffusion paper use.
    "imagenet256-uncond": dict(
        _IMAGENET_COMMON,
        image_size=256,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=False,
        num_head_channels=64,
    ),
    # 256x256_diffusion.pt (class-conditional; forward needs labels y).
    "imagenet256-cond": dict(
        _IMAGENET_COMMON,
        image_size=256,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=True,
        num_head_channels=64,
    ),
    # 128x128_diffusion.pt: 4 heads of varying width instead of 64-channel heads.
    "imagenet128-cond": dict(
        _IMAGENET_COMMON,
        image_size=128,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=True,
        num_head_channels=-1,
    ),
    # 64x64_diffusion.pt: new attention order; trained with the *cosine* schedule (see GD_NOISE_SCHEDULES).
    "imagenet64-cond": dict(
        _IMAGENET_COMMON,
        image_size=64,
        num_channels=192,
        num_res_blocks=3,
        channel_mult="",
        class_cond=True,
        num_head_channels=64,
        use_new_attention_order=True,
    ),
    # 512x512_diffusion.pt (channel_mult starts at 0.5).
    "imagenet512-cond": dict(
        _IMAGENET_COMMON,
        image_size=512,
        num_channels=256,
        num_res_blocks=2,
        channel_mult="",
        class_cond=True,
        num_head_channels=64,
    ),
    # The bundled Fashion-MNIST model (mimicfast/weights/fmnist_unet.safetensors; docs/MODEL_CARD.md).
    "fashion-mnist-32": dict(
        image_size=32,
        in_channels=1,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,1,2",
        learn_sigma=False,
        class_cond=False,
        use_checkpoint=False,
        attention_resolutions="8",
        num_heads=1,
        num_head_channels=32,
        num_heads_upsample=-1,
        use_scale_shift_norm=True,
        dropout=0.0,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
    ),
    # ../shared/fixtures/parity/gd_unet_small_state_dict.pt (random weights, for tests).
    "gd-small-test": dict(
        _IMAGENET_COMMON,
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,1,2",
        class_cond=False,
        attention_resolutions="8",
        num_head_channels=16,
    ),
}

# The 1000-step beta schedule each named model was trained with (guided-diffusion README --noise_schedule).
GD_NOISE_SCHEDULES: dict[str, str] = {name: "linear" for name in GD_CONFIGS} | {"imagenet64-cond": "cosine"}

# Container keys unwrapped by load_state_dict_file, in order of preference: EMA weights are the ones to sample
# with when a training checkpoint holds both.
_CONTAINER_KEYS = ("ema", "state_dict", "model")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SHOW = 5  # how many offending keys an error message lists


def load_state_dict_file(path: str | PathLike[str]) -> dict[str, Tensor]:
    """Read a ``name -> Tensor`` mapping from a ``.pt/.pth/.bin/.ckpt`` or ``.safetensors`` file, on the CPU.

    Never executes code from the file. Common containers are unwrapped: if the top level is not itself a
    ``name -> Tensor`` mapping but ``obj["ema"]``, ``obj["state_dict"]`` or ``obj["model"]`` is (first match in
    that order), that inner mapping is returned. A ``module.`` prefix on every key (``DataParallel``) is removed.

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        CheckpointError: truncated or corrupt file, unknown suffix, a pickle that needs code to load, or content
            that is not a mapping of string names to tensors.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj: Any = _load_safetensors(path)
    elif suffix in _TORCH_SUFFIXES:
        obj = _load_torch(path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint suffix {suffix!r}; expected one of "
            f"{', '.join(_TORCH_SUFFIXES)} or .safetensors"
        )
    return _as_state_dict(obj, path)


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {e}") from None


def _load_torch(path: Path) -> Any:
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path}: is a Git LFS pointer, not the weights (run `git lfs pull`)")
    # mmap needs torch's zip format; legacy (pre-1.6) pickles load fully into memory.
    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" in msg:
            detail = next((ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln), "")
            raise CheckpointError(
                f"{path}: refused to load: the pickle needs Python code/objects beyond tensors ({detail}). "
                "mimicfast never executes code from checkpoint files; re-save the weights as a plain "
                "state dict (torch.save(module.state_dict(), ...)) or as .safetensors"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(msg)}"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        if head.startswith(b"PK") and not is_zip:
            reason = "zip archive without its central directory (truncated download?)"
        else:
            reason = _reason(str(e)) if isinstance(e, RuntimeError) else f"{type(e).__name__} {e}".strip()
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None


def _reason(msg: str) -> str:
    """The informative sentence of a torch.load error (skipping its generic weights_only boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in msg.splitlines():
        line = line.strip()
        if line and not line.startswith(boilerplate):
            return line.split(". ")[0][:200]
    return "unreadable"


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")
    if not _is_tensor_mapping(obj):
        inner = next((obj[k] for k in _CONTAINER_KEYS if _is_tensor_mapping(obj.get(k))), None)
        if inner is None:
            bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
            what = "is empty" if not obj else f"entry {bad!r} has type {type(obj[bad]).__name__}, not Tensor"
            raise CheckpointError(
                f"{path}: not a state dict (name -> Tensor): {what}; containers unwrapped: "
                f"{', '.join(repr(k) for k in _CONTAINER_KEYS)}"
            )
        obj = inner
    bad_key = next((k for k in obj if not isinstance(k, str)), None)
    if bad_key is not None:
        raise CheckpointError(f"{path}: state dict key {bad_key!r} is not a string")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _resolve_config(config: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(config, str):
        if config not in GD_CONFIGS:
            raise InputError(f"unknown guided-diffusion config {config!r}; known: {', '.join(GD_CONFIGS)}")
        return config, dict(GD_CONFIGS[config])
    if isinstance(config, Mapping):
        return "<custom>", dict(config)
    raise InputError(
        f"config must be a name from GD_CONFIGS or a dict of create_model kwargs, got {type(config).__name__}"
    )


def _build_on_meta(kwargs: dict[str, Any], name: str) -> GuidedDiffusionUNet:
    """Build the architecture without allocating weights (shapes only)."""
    try:
        with torch.device("meta"):
            return guided_diffusion_unet(**kwargs)
    except TypeError as e:
        raise InputError(f"config {name!r} has invalid create_model kwargs: {e}") from None


def state_dict_mismatch(model: nn.Module, sd: Mapping[str, Tensor]) -> str | None:
    """Describe how ``sd`` differs from the model's keys/shapes, or None if it loads strictly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k}: file {list(sd[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {label} ({', '.join(items[:_SHOW])}{', ...' if len(items) > _SHOW else ''})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrongly shaped keys", shaped),
        )
        if items
    ]
    return "; ".join(parts) or None


def matching_gd_configs(sd: Mapping[str, Tensor]) -> list[str]:
    """Names of the GD_CONFIGS whose keys and shapes ``sd`` matches exactly (built on the meta device)."""
    return [name for name, kw in GD_CONFIGS.items() if state_dict_mismatch(_build_on_meta(kw, name), sd) is None]


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
        config: a name in :data:`GD_CONFIGS` (e.g. ``"imagenet256-uncond"``) or a dict of ``create_model`` kwargs.
        dtype: cast every parameter to this floating dtype; None keeps the config's dtypes (float32, or the
            mixed float16 torso of ``use_fp16=True``).
        device: where the weights live (default CPU).

    Returns:
        The network in eval mode with ``requires_grad=False`` on every parameter.

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not match the config (the message names the
            config, the first few offending keys, and any named config the file does match).
        InputError: unknown config name, invalid kwargs, or a non-floating ``dtype``.
    """
    name, kwargs = _resolve_config(config)
    if dtype is not None and not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point dtype, got {dtype}")
    sd = load_state_dict_file(path)
    model = _build_on_meta(kwargs, name)
    problem = state_dict_mismatch(model, sd)
    if problem is not None:
        matches = [m for m in matching_gd_configs(sd) if m != name]
        hint = f"; the file matches config {', '.join(repr(m) for m in matches)}" if matches else ""
        raise CheckpointError(f"{path}: checkpoint does not match config {name!r}: {problem}{hint}")
    if dtype is not None:
        model = model.to(dtype)
    model = model.to_empty(device=device if device is not None else "cpu")
    model.load_state_dict(sd, strict=True)
    if GD_NOISE_SCHEDULES.get(name) == "cosine":
        # Not in the state dict: tells mimicfast.sampling.as_denoiser which schedule the model was trained with.
        model.register_buffer("betas", cosine_betas(), persistent=False)
    return model.eval().requires_grad_(False)
