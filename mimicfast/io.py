"""Reading and writing image batches for the CLI: PNG/JPEG files, ``.npy`` and ``.pt`` batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mimicfast.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
BATCH_SUFFIXES = {".npy", ".pt", ".pth"}


def _to_unit_float(array: torch.Tensor, source: Path) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    if array.dtype == torch.uint8:
        return array.float() / 255.0
    if not array.is_floating_point():
        raise InputError(f"{source}: expected uint8 or float images, got dtype {array.dtype}")
    return array.float()


def _as_nchw(array: torch.Tensor, channels: int, source: Path) -> torch.Tensor:
    """Accept [N, C, H, W], [C, H, W] or (single-channel) [H, W] / [N, H, W]."""
    if array.dim() == 2 and channels == 1:
        array = array[None, None]
    elif array.dim() == 3:
        array = array[None] if array.shape[0] == channels else array[:, None] if channels == 1 else array
    if array.dim() != 4:
        raise InputError(f"{source}: expected an image batch [N, C, H, W], got shape {tuple(array.shape)}")
    if array.shape[1] != channels:
        raise InputError(f"{source}: the model takes {channels} channels, got shape {tuple(array.shape)}")
    return array


def _read_picture(path: Path, channels: int, size: int | None, resize: bool) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if resize and size is not None and img.size != (size, size):
                scale = size / min(img.size)
                w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
                img = img.resize((w, h), Image.Resampling.BICUBIC)
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            array = torch.from_numpy(np.array(img, dtype=np.uint8))
    except OSError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    array = array[None] if array.dim() == 2 else array.permute(2, 0, 1)
    return _to_unit_float(array, path)[None]


def _read_batch(path: Path, channels: int) -> torch.Tensor:
    if path.suffix == ".npy":
        try:
            array = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise InputError(f"{path}: not a plain .npy array ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- any unpickling failure is a bad input file
            raise InputError(f"{path}: not a tensor file loadable without executing code ({exc})") from None
        array = obj.get("images") if isinstance(obj, dict) else obj
        if not isinstance(array, torch.Tensor):
            raise InputError(f"{path}: expected a tensor (or a dict with 'images'), got {type(obj).__name__}")
    return _to_unit_float(_as_nchw(array, channels, path), path)


def pad_to(batch: torch.Tensor, size: int, source: Path) -> torch.Tensor:
    """Zero-pad [N, C, h, w] symmetrically to [N, C, size, size] (e.g. Fashion-MNIST 28x28 -> 32x32)."""
    h, w = batch.shape[-2:]
    if h > size or w > size:
        raise InputError(f"{source}: {h}x{w} is larger than the model's {size}x{size}; cannot pad")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(batch, (left, size - w - left, top, size - h - top))


def read_inputs(
    paths: list[Path], channels: int, size: int | None, *, resize: bool = False, pad: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """Read every input into one float32 batch [N, C, H, W] in [0, 1] and a unique name per image.

    ``resize`` scales and center-crops pictures to the model's size; ``pad`` zero-pads smaller inputs to it.
    """
    images, names = [], []
    for path in paths:
        if not path.is_file():
            raise InputError(f"input not found: {path}")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            batch = _read_picture(path, channels, size, resize)
            names.append(path.stem)
        elif suffix in BATCH_SUFFIXES:
            batch = _read_batch(path, channels)
            names.extend(f"{path.stem}_{i:04d}" for i in range(batch.shape[0]))
        else:
            raise InputError(f"{path}: unsupported input type {path.suffix!r} (PNG/JPEG, .npy or .pt)")
        if pad and size is not None:
            batch = pad_to(batch, size, path)
        if size is not None and tuple(batch.shape[-2:]) != (size, size):
            hint = " (pass --pad to zero-pad" + (
                ", or --resize to resize and center-crop)" if suffix in IMAGE_SUFFIXES else ")"
            )
            raise InputError(
                f"{path}: the model takes {size}x{size} images, got {batch.shape[-2]}x{batch.shape[-1]}{hint}"
            )
        images.append(batch)
    if len(set(names)) != len(names):
        raise InputError("two inputs have the same file name; their outputs would collide")
    return torch.cat(images), names


def write_png(image: torch.Tensor, path: Path) -> None:
    """Write one [C, H, W] image in [0, 1] as an 8-bit PNG."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)
