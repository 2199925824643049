"""Reading a ``name -> Tensor`` mapping from a ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file without
running code from it.

Files are opened through :mod:`mimicfast.safe_read` (regular files only, bounded sizes). torch's zip format has
its ``data.pkl`` walked by :func:`~mimicfast.safe_read.check_pickle` before ``torch.load(weights_only=True)``
reads it; its tensor data is memory-mapped when the archive stores its members uncompressed (what ``torch.save``
writes). A DEFLATE-compressed archive (a ``torch.save`` file re-zipped: ``torch.load`` reads it) cannot be
memory-mapped, since a map shows the compressed bytes, so it is inflated instead, within a bound on how far it
may expand; other zip compressions are refused. The legacy (pre-1.6) format has its pickles walked the same way.
Every failure is one :class:`~mimicfast.errors.CheckpointError` line naming the file.
"""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor

from mimicfast.errors import CheckpointError
from mimicfast.models.weight_checks import check_weights, short
from mimicfast.safe_read import (
    MAX_CHECKPOINT_BYTES,
    BoundedReader,
    check_pickle,
    check_torch_legacy,
    one_line,
    open_regular,
)

__all__ = ["load_state_dict_file", "one_line_errors", "read_state_dict", "read_torch"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
# Container keys unwrapped by load_state_dict_file, in order of preference: EMA weights are the ones to sample
# with when a training checkpoint holds both.
_CONTAINER_KEYS = ("ema", "state_dict", "model")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_TORCH_PICKLE_BYTES = 256 * 2**20  # data.pkl of torch's zip format: structure only, tensor data is separate
_MAX_MESSAGE = 2000  # mismatch reports list a few keys of each kind; quoted file content is cut
# A compressed archive is inflated in memory. DEFLATE expands up to ~1000x, so a small file could ask for far
# more memory than it holds; real weights compress by a few percent, so 100x (or 64 MiB for tiny files) is
# generous for them and still bounds what a file can make the reader allocate.
_MAX_INFLATE_RATIO = 100
_MIN_INFLATE_BYTES = 64 * 2**20


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
        if suffix not in (*_TORCH_SUFFIXES, ".safetensors"):
            raise CheckpointError(
                f"{path}: unknown checkpoint suffix {suffix!r}; expected one of "
                f"{', '.join(_TORCH_SUFFIXES)} or .safetensors"
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


def read_torch(f: BoundedReader) -> Any:
    """``torch.load(weights_only=True)`` of an opened file (zip or legacy format), after the checks in the module
    docstring; the object is returned as stored (tensors on the CPU).

    Raises:
        CheckpointError: one line naming ``f.path``: empty, a Git LFS pointer, truncated or corrupt, a pickle
            that needs code or exceeds the structure bounds, a zip member compressed other than by DEFLATE, or a
            compressed archive that would inflate beyond its bound.
    """
    path = f.path
    head = f.read(64)
    f.seek(0)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path}: is a Git LFS pointer, not the weights (run `git lfs pull`)")
    try:
        if head.startswith(b"PK"):  # torch's zip format: walk data.pkl, then read the tensor data
            if _check_torch_zip(f):
                return torch.load(f.fd_path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(f, map_location="cpu", weights_only=True)
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


def _check_torch_zip(f: BoundedReader) -> bool:
    """Walk the ``<archive>/data.pkl`` of a torch zip checkpoint (:func:`check_pickle`) before torch reads it, and
    say whether its tensor data may be memory-mapped (True: every member is stored uncompressed)."""
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
    members = archive.infolist()
    odd = next((m for m in members if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)), None)
    if odd is not None:
        raise CheckpointError(
            f"zip member {short(odd.filename)} uses compression method {odd.compress_type}; torch reads only "
            "stored or DEFLATE members (re-save with torch.save)"
        )
    compressed = [m for m in members if m.compress_type == zipfile.ZIP_DEFLATED]
    # The reader checks each member against the size its directory entry declares, so the declared sizes are
    # what inflating costs.
    inflated = sum(m.file_size for m in compressed)
    limit = max(_MIN_INFLATE_BYTES, _MAX_INFLATE_RATIO * f.size)
    if inflated > limit:
        raise CheckpointError(
            f"a compressed zip archive that would inflate to {inflated} bytes from {f.size} (at most {limit}); "
            "re-save it uncompressed with torch.save"
        )
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
    return not compressed


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
