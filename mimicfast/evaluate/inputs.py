"""What an evaluation reads: the images with their labels, the classifier and the diffusion model.

Each loader also returns an identity string (the file's SHA-256, or ``bundled:<name>``) that goes into the run's
settings, so results of other data or weights never mix with a folder's rows.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimicfast.decode import IMAGE_SUFFIXES, Geometry, open_input, read_inputs
from mimicfast.errors import InputError


def content_id(path: Path) -> str:
    """``<name>:sha256:<first 16 hex digits>`` of a file's bytes (or of every file of a folder, sorted), read in
    bounded chunks through :func:`mimicfast.decode.open_input` (regular files only): what a results folder is keyed by,
    so replacing a file at the same path is noticed."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open_input(f) as reader:
            for block in iter(lambda: reader.read(1 << 20), b""):
                digest.update(block)
    return f"{path.name}:sha256:{digest.hexdigest()[:16]}"


def _load_tensor_file(path: Path) -> object:
    """A ``.npy`` array or ``.pt`` object read without pickle code, through the bounded safe reader."""
    with open_input(path) as f:
        try:
            if path.suffix.lower() == ".npy":
                return torch.from_numpy(np.load(f, allow_pickle=False))
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- any parser failure on a user's file is a bad input
            raise InputError(f"{path}: not a readable .npy/.pt file ({type(exc).__name__}: {exc})") from None


def load_data(data: Path | None, labels: Path | None, channels: int, size: int | None,
              pad: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(x [N, C, H, W] float32 in [0, 1], y [N] int64, identity)``.

    ``data`` None is the bundled Fashion-MNIST slice (1,000 test images). Otherwise a ``.pt`` file holding
    ``{"images", "labels"}``; a ``.npy`` or ``.pt`` image batch with a ``labels`` file; or a folder of pictures
    (PNG/JPEG/BMP/WebP, read in sorted file-name order) with a ``labels`` file. Images are read as ``mimicfast
    purify`` reads them (:func:`mimicfast.decode.read_inputs`: uint8 or float in [0, 1]; ``pad`` zero-pads smaller
    images to the model's size). A labels file is ``.npy``/``.pt`` (one integer per image) or text: one label per
    line, or ``<file name> <label>`` per line (for a folder).
    """
    if data is None:
        from mimicfast.default import TEST_SLICE_PATH, load_test_slice

        x, y = load_test_slice()
        return x, y, "bundled:" + content_id(TEST_SLICE_PATH)
    if not data.exists():
        raise FileNotFoundError(f"--data not found: {data}")
    geometry = Geometry(channels, size, pad=pad)
    names = None
    y = None
    if data.is_dir():
        pictures = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not pictures:
            raise InputError(f"{data}: no pictures in the folder")
        x, names = read_inputs(pictures, geometry)
        names = [p.stem for p in pictures]
    elif data.suffix.lower() in (".npy", ".pt", ".pth"):
        x, _ = read_inputs([data], geometry)
        if data.suffix.lower() != ".npy" and labels is None:
            obj = _load_tensor_file(data)
            y = obj.get("labels") if isinstance(obj, dict) else None
    else:
        raise InputError(f"{data}: unsupported --data (a folder of pictures, .npy or .pt)")
    if labels is not None:
        y = _read_labels(labels, names)
    if y is None:
        raise InputError(f"{data}: no labels; pass --labels FILE (or store {{'images', 'labels'}} in a .pt)")
    y = torch.as_tensor(y).long().flatten()
    if y.shape[0] != x.shape[0]:
        raise InputError(f"{x.shape[0]} images but {y.shape[0]} labels")
    ident = content_id(data) + ("" if labels is None else "+" + content_id(labels))
    return x, y, ident


def _read_labels(path: Path, names: list[str] | None) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"--labels not found: {path}")
    if path.suffix.lower() in (".npy", ".pt", ".pth"):
        return torch.as_tensor(_load_tensor_file(path))
    lines = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()]
    try:
        if all(len(parts) == 1 for parts in lines):
            return torch.tensor([int(parts[0]) for parts in lines])
        by_name = {Path(parts[0]).stem: int(parts[-1]) for parts in lines}
    except ValueError as exc:
        raise InputError(f"{path}: expected integer labels ({exc})") from None
    if names is None:
        raise InputError(f"{path}: '<file name> <label>' lines need a folder of images as --data")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{path}: no label for {', '.join(missing[:5])}")
    return torch.tensor([by_name[n] for n in names])


def load_classifier(path: Path | None, class_path: str | None = None, kwargs: dict | None = None,
                    device: str = "cpu", *, trust_code: bool = False) -> tuple[nn.Module, str]:
    """``(classifier in eval mode with frozen parameters, identity)``: ``x [B, C, H, W] in [0, 1] -> logits``.

    ``path`` None is the bundled Fashion-MNIST CNN. With ``class_path`` (``"package.module:Class"``) ``path`` is a
    state dict loaded strictly into ``Class(**kwargs)``; without it, a TorchScript file (``torch.jit.save``).
    """
    if path is None:
        from mimicfast.default import CLASSIFIER_PATH, load_default_classifier

        return load_default_classifier(device), "bundled:" + content_id(CLASSIFIER_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"--classifier not found: {path}")
    if class_path is None:
        try:
            model = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            raise InputError(f"{path}: not a TorchScript file; for a state dict pass --classifier-class "
                             f"module:Class ({' '.join(str(exc).split())[:200]})") from None
    else:
        from mimicfast.models.loader import load_state_dict_file

        module_name, _, cls_name = class_path.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise InputError(f"--classifier-class {class_path!r}: cannot import ({exc})") from None
        model = cls(**(kwargs or {}))
        try:
            model.load_state_dict(load_state_dict_file(path), strict=True)
        except RuntimeError as exc:
            raise InputError(f"{path}: does not match {class_path}: {' '.join(str(exc).split())[:300]}") from None
    ident = content_id(path) + ("" if class_path is None else f"+{class_path}{json.dumps(kwargs or {})}")
    model = model.to(device).eval()
    for param in model.parameters():  # ScriptModules have no requires_grad_()
        param.requires_grad_(False)
    return model, ident


def load_model(path: Path | None, config: str | None = None, device: str = "cpu") -> tuple[nn.Module, str]:
    """``(diffusion network, identity)``: any checkpoint :func:`mimicfast.load` accepts, or (None) the bundled
    Fashion-MNIST UNet."""
    if path is None:
        from mimicfast.default import UNET_PATH, load_default_unet

        return load_default_unet(device), "bundled:" + content_id(UNET_PATH)
    from mimicfast.models import load

    return load(path, config).to(device), content_id(path) + ("" if config is None else f"+{config}")
