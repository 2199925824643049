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
import io
import math
import pickle
import zipfile
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor, nn

from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.configs import (
    FAMILIES,
    GD_CONFIGS,
    GD_NOISE_SCHEDULES,
    gd_name_and_kwargs,
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
from mimicfast.safe_read import (
    MAX_CHECKPOINT_BYTES,
    BoundedReader,
    check_pickle,
    check_torch_legacy,
    one_line,
    open_regular,
    read_json,
)
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
    "sidecar_config_path",
    "state_dict_mismatch",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_GD_MARKER = "input_blocks.0.0.weight"  # first conv of every guided-diffusion UNetModel
_EDM_MARKER = "model.map_layer0.weight"  # mapping network of every EDM SongUNet/DhariwalUNet
# Container keys unwrapped by load_state_dict_file, in order of preference: EMA weights are the ones to sample
# with when a training checkpoint holds both.
_CONTAINER_KEYS = ("ema", "state_dict", "model")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SHOW = 5  # how many offending keys an error message lists
_MAX_TORCH_PICKLE_BYTES = 256 * 2**20  # data.pkl of torch's zip format: structure only, tensor data is separate
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_MAX_MESSAGE = 2000  # mismatch reports list a few keys of each kind; quoted file content is cut


def _one_line_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Public entry points raise CheckpointErrors of one line: names and values quoted from a hostile file may
    hold line breaks or be long."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except CheckpointError as e:
            text = str(e)
            if "\n" in text or "\r" in text or len(text) > _MAX_MESSAGE:
                raise CheckpointError(one_line(text, _MAX_MESSAGE)) from None
            raise

    return wrapper


def sidecar_config_path(checkpoint: str | PathLike[str]) -> Path:
    """``<stem>.json`` beside a checkpoint: where :func:`load` looks for its config."""
    return Path(checkpoint).with_suffix(".json")


@_one_line_errors
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

        model = load_diffusers(path)
        check_weights(model.state_dict(), str(path), floating_only=False)
        return model
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if config is not None:
            raise InputError(f"{path}: an EDM .pkl records its own configuration; do not pass a config")
        model = load_edm_pickle(path)
        return _finish(model, {"family": "edm", "precond_class": model.precond_class, **model.init_kwargs})

    cfg = resolve_config(path, config)
    if cfg is None:
        return _autodetect(path)
    if cfg["family"] == "guided_diffusion":
        return _finish(load_guided_diffusion(path, cfg), cfg)
    return _load_edm_state_dict(path, cfg)


@_one_line_errors
def resolve_config(path: str | PathLike[str], config: Any) -> dict[str, Any] | None:
    """Turn ``config`` (or, when None, the sidecar ``<stem>.json`` of checkpoint ``path``) into a validated config
    dict (:func:`~mimicfast.models.configs.validate_config`); None means auto-detect from the file.

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
        return validate_config(config)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None


@_one_line_errors
def load_state_dict_file(path: str | PathLike[str]) -> dict[str, Tensor]:
    """Read a ``name -> Tensor`` mapping from a ``.pt/.pth/.bin/.ckpt`` or ``.safetensors`` file, on the CPU.

    Never executes code from the file. Common containers are unwrapped: if the top level is not itself a
    ``name -> Tensor`` mapping but ``obj["ema"]``, ``obj["state_dict"]`` or ``obj["model"]`` is (first match in
    that order), that inner mapping is returned. A ``module.`` prefix on every key (``DataParallel``) is removed.
    Every tensor passes :func:`check_weights` with ``floating_only=False`` (integer buffers such as BatchNorm's
    ``num_batches_tracked`` are fine in a state dict; the network loaders require floating weights).

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        CheckpointError: not a regular file, truncated or corrupt, unknown suffix, a pickle that needs code to
            load or exceeds the structure bounds, content that is not a mapping of string names to tensors, or
            weights that fail :func:`check_weights`.
    """
    sd = _read_state_dict(Path(path))
    check_weights(sd, str(path), floating_only=False)
    return sd


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    suffix = path.suffix.lower()
    with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES) as f:
        if suffix not in (*_TORCH_SUFFIXES, ".safetensors"):
            raise CheckpointError(
                f"{path}: unknown checkpoint suffix {suffix!r}; expected one of "
                f"{', '.join(_TORCH_SUFFIXES)} or .safetensors"
            )
        obj = _load_safetensors(f) if suffix == ".safetensors" else _load_torch(f)
    return _as_state_dict(obj, path)


def _load_safetensors(f: BoundedReader) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(f.fd_path, device="cpu")
    except Exception as e:  # noqa: BLE001 -- any failure of the reader (SafetensorError, ...) means a bad file
        raise CheckpointError(
            f"{f.path}: not a valid safetensors file (truncated or corrupt?): {one_line(e)}"
        ) from None


def _load_torch(f: BoundedReader) -> Any:
    path = f.path
    head = f.read(64)
    f.seek(0)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path}: is a Git LFS pointer, not the weights (run `git lfs pull`)")
    try:
        if head.startswith(b"PK"):  # torch's zip format: walk data.pkl, then memory-map the tensor data
            _check_torch_zip(f)
            return torch.load(f.fd_path, map_location="cpu", weights_only=True, mmap=True)
        check_torch_legacy(f, "not a readable PyTorch checkpoint")  # pre-1.6 format: pickles, then raw storages
        f.seek(0)
        return torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" in msg:
            detail = next((ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln), "")
            raise CheckpointError(
                f"{path}: refused to load: the pickle needs Python code/objects beyond tensors ({detail[:200]}). "
                "mimicfast never executes code from checkpoint files; re-save the weights as a plain "
                "state dict (torch.save(module.state_dict(), ...)) or as .safetensors"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(msg)}"
        ) from None
    except Exception as e:  # noqa: BLE001 -- torch's reader of a hostile file may fail in any way (AssertionError...)
        reason = _reason(str(e)) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {one_line(e)}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None


def _check_torch_zip(f: BoundedReader) -> None:
    """Walk the ``<archive>/data.pkl`` of a torch zip checkpoint (:func:`check_pickle`) before torch reads it."""
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(
            "not a readable PyTorch checkpoint (truncated or corrupt?): zip archive without its central "
            "directory (truncated download?)"
        ) from None
    names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise CheckpointError("not a readable PyTorch checkpoint: a zip archive without torch's <archive>/data.pkl")
    info = archive.getinfo(names[0])
    try:
        with archive.open(info) as member:
            data = member.read(_MAX_TORCH_PICKLE_BYTES + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise CheckpointError(
            f"not a readable PyTorch checkpoint (truncated or corrupt?): data.pkl: {one_line(e)}"
        ) from None
    if len(data) > _MAX_TORCH_PICKLE_BYTES:  # read bounded: the zip header's size may lie
        raise CheckpointError(f"data.pkl larger than {_MAX_TORCH_PICKLE_BYTES} bytes")
    check_pickle(io.BytesIO(data), "data.pkl")
    f.seek(0)


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
            what = "is empty" if not obj else f"entry {_short(bad)} has type {type(obj[bad]).__name__}, not Tensor"
            raise CheckpointError(
                f"{path}: not a state dict (name -> Tensor): {what}; containers unwrapped: "
                f"{', '.join(repr(k) for k in _CONTAINER_KEYS)}"
            )
        obj = inner
    bad_key = next((k for k in obj if not isinstance(k, str)), None)
    if bad_key is not None:
        raise CheckpointError(f"{path}: state dict key {_short(bad_key)} is not a string")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _short(value: Any) -> str:
    """repr of a key for a message, cut to 80 characters (the pickle walk bounds what repr visits)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_weights(tensors: Mapping[str, Tensor], source: str, *, floating_only: bool = True) -> None:
    """Refuse weights a network cannot use: every tensor must be a plain dense (strided) CPU tensor of a
    floating dtype (float16/bfloat16/float32/float64; with ``floating_only=False`` also integer or bool), own at
    least as many bytes of storage as it has elements (no zero-stride views inflating a tiny file), and hold only
    finite values.

    NaN/Inf weights would make every purified image NaN (black PNGs, exit 0); sparse, meta, quantized or
    integer weights fail later with an unrelated traceback (or, copied into a float network, load silently).

    Raises:
        CheckpointError: naming ``source``, the first offending key and what is wrong with it.
    """
    for key, t in tensors.items():
        problem = None
        if type(t) not in (Tensor, nn.Parameter):
            problem = f"is a {type(t).__name__}, not a plain tensor"
        elif t.layout != torch.strided:
            problem = f"is a {str(t.layout).removeprefix('torch.')} tensor; only dense tensors are weights"
        elif t.is_meta:
            problem = "is a meta tensor (a shape without data)"
        elif t.device.type != "cpu":
            problem = f"is on {t.device}, not the CPU"
        elif t.dtype not in _WEIGHT_DTYPES and (floating_only or t.is_complex() or t.is_quantized):
            problem = f"has dtype {str(t.dtype).removeprefix('torch.')}; weights must be floating point"
        elif t.numel() * t.element_size() > t.untyped_storage().nbytes() - t.storage_offset() * t.element_size():
            # A few bytes of storage viewed with zero strides as billions of elements: refused before any pass.
            problem = f"views {t.numel()} elements over {t.untyped_storage().nbytes()} bytes of storage (overlapping)"
        elif t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            problem = f"has {bad} non-finite values (NaN or Inf)"
        if problem is not None:
            raise CheckpointError(f"{source}: weight {_short(key)} {problem}")


def state_dict_mismatch(model: nn.Module | Mapping[str, torch.Size], sd: Mapping[str, Tensor]) -> str | None:
    """Describe how ``sd`` differs from the model's keys/shapes (or a ``key -> shape`` mapping), or None if it
    loads strictly."""
    expected = {k: v.shape for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else model
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k}: file {list(sd[k].shape)} vs model {list(shape)}"
        for k, shape in expected.items()
        if k in sd and sd[k].shape != shape
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


def _build_on_meta(build: Callable[[], nn.Module], what: str) -> nn.Module:
    """Build an architecture without allocating weights (shapes only). The config is validated already; a
    combination the constructors still refuse (e.g. channels not divisible by the head count) is one line."""
    try:
        with torch.device("meta"):
            return build()
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        raise CheckpointError(f"invalid {what} config: {one_line(e)}") from None


def _gd_on_meta(kwargs: dict[str, Any], name: str) -> GuidedDiffusionUNet:
    return _build_on_meta(lambda: guided_diffusion_unet(**kwargs), f"guided-diffusion {name!r}")


@functools.cache
def _named_gd_shapes(name: str) -> dict[str, torch.Size]:
    """Key -> shape of a named config's state dict (built once per process, on the meta device)."""
    return {k: v.shape for k, v in _gd_on_meta(GD_CONFIGS[name], name).state_dict().items()}


def matching_gd_configs(sd: Mapping[str, Tensor]) -> list[str]:
    """Names of the GD_CONFIGS whose keys and shapes ``sd`` matches exactly."""
    return [name for name in GD_CONFIGS if state_dict_mismatch(_named_gd_shapes(name), sd) is None]


@_one_line_errors
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
    sd = _read_state_dict(Path(path))
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
    sd = _read_state_dict(path)
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
        f"{_EDM_MARKER!r} present; first keys: {', '.join(_short(k) for k in list(sd)[:3])})"
    )


def _edm_on_meta(cfg: dict[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in cfg.items() if k not in ("family", "precond_class")}
    return _build_on_meta(lambda: edm_network(cfg["precond_class"], **kwargs), f"EDM {cfg['precond_class']}")


def _load_edm_state_dict(path: Path, cfg: dict[str, Any]) -> nn.Module:
    try:
        net = _edm_on_meta(cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    sd = _read_state_dict(path)
    problem = state_dict_mismatch(net, sd)
    if problem is not None:
        raise CheckpointError(f"{path}: checkpoint does not match its EDM {cfg['precond_class']} config: {problem}")
    check_weights(sd, str(path))
    net.load_state_dict(dict(sd), strict=True, assign=True)
    return _finish(net, cfg)


@_one_line_errors
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
            what = f"keys [{', '.join(sorted(map(_short, top)))}]" if isinstance(top, Mapping) else type(top).__name__
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
