"""Reading a ``name -> Tensor`` mapping from a ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file without
running code from it.

Files are opened through :mod:`mimicfast.safe_read` (regular files only, bounded sizes) and torch files read by
its :func:`~mimicfast.safe_read.read_torch` (pickles walked before ``torch.load(weights_only=True)``, compressed
archives inflated within a bound). Common containers are unwrapped. Every failure is one
:class:`~mimicfast.errors.CheckpointError` line naming the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from torch import Tensor

from mimicfast.errors import CheckpointError
from mimicfast.models.weight_checks import check_weights, short
from mimicfast.safe_read import MAX_CHECKPOINT_BYTES, BoundedReader, one_line, open_regular, read_torch

__all__ = ["STATE_DICT_SUFFIXES", "load_state_dict_file", "one_line_errors", "read_state_dict"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
# Container keys unwrapped by load_state_dict_file, in order of preference: EMA weights are the ones to sample
# with when a training checkpoint holds both.
_CONTAINER_KEYS = ("ema", "state_dict", "model")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_MESSAGE = 2000  # mismatch reports list a few keys of each kind; quoted file content is cut


def one_line_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
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


@one_line_errors
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
    sd = read_state_dict(Path(path))
    check_weights(sd, str(path), floating_only=False)
    return sd


def read_state_dict(path: Path) -> dict[str, Tensor]:
    suffix = path.suffix.lower()
    with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES) as f:
        if suffix not in (*STATE_DICT_SUFFIXES, ".safetensors"):
            raise CheckpointError(
                f"{path}: unknown checkpoint suffix {suffix!r}; expected one of "
                f"{', '.join(STATE_DICT_SUFFIXES)} or .safetensors"
            )
        obj = _load_safetensors(f) if suffix == ".safetensors" else read_torch(f)
    return _as_state_dict(obj, path)


def _load_safetensors(f: BoundedReader) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(f.fd_path, device="cpu")
    except Exception as e:  # noqa: BLE001 -- any failure of the reader (SafetensorError, ...) means a bad file
        raise CheckpointError(
            f"{f.path}: not a valid safetensors file (truncated or corrupt?): {one_line(e)}"
        ) from None


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")
    if not _is_tensor_mapping(obj):
        inner = next((obj[k] for k in _CONTAINER_KEYS if _is_tensor_mapping(obj.get(k))), None)
        if inner is None:
            bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
            what = "is empty" if not obj else f"entry {short(bad)} has type {type(obj[bad]).__name__}, not Tensor"
            raise CheckpointError(
                f"{path}: not a state dict (name -> Tensor): {what}; containers unwrapped: "
                f"{', '.join(repr(k) for k in _CONTAINER_KEYS)}"
            )
        obj = inner
    bad_key = next((k for k in obj if not isinstance(k, str)), None)
    if bad_key is not None:
        raise CheckpointError(f"{path}: state dict key {short(bad_key)} is not a string")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)
