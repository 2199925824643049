"""The bundled Fashion-MNIST models and test slice: everything the demo needs, shipped in the package.

* ``weights/fmnist_unet.safetensors`` + ``fmnist_unet.json``: a guided-diffusion-format DDPM UNet (eps-prediction,
  linear betas 1e-4..0.02, 1000 steps) on 32x32 grey images (Fashion-MNIST padded by 2 pixels);
* ``weights/fmnist_classifier.safetensors``: :class:`mimicfast.classifier.FashionCNN` on [0, 1] pixels;
* ``data/fmnist_test_1000.npz``: the first 1,000 images of the Fashion-MNIST test set (uint8, 28x28) and labels.

See docs/MODEL_CARD.md for how they were trained. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimicfast.errors import CheckpointError, InputError

_PACKAGE = Path(__file__).resolve().parent
WEIGHTS_DIR = _PACKAGE / "weights"
UNET_PATH = WEIGHTS_DIR / "fmnist_unet.safetensors"
CLASSIFIER_PATH = WEIGHTS_DIR / "fmnist_classifier.safetensors"
TEST_SLICE_PATH = _PACKAGE / "data" / "fmnist_test_1000.npz"


def _config(path: Path) -> dict:
    cfg_path = path.with_suffix(".json")
    try:
        return json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the bundled config {cfg_path}: {exc}") from exc


def fmnist_unet_config(path: Path = UNET_PATH) -> dict:
    """``create_model`` kwargs of the bundled UNet (its JSON without the ``family`` tag and guidance scales)."""
    return _unet_config_and_scales(Path(path))[0]


def _unet_config_and_scales(path: Path) -> tuple[dict, dict[str, float]]:
    from mimicfast.models.configs import split_guidance_scales

    try:
        cfg, scales = split_guidance_scales(_config(path))
    except CheckpointError as exc:
        raise CheckpointError(f"{path.with_suffix('.json')}: {exc}") from None
    if cfg.pop("family", None) != "guided_diffusion":
        raise CheckpointError(f"{path.with_suffix('.json')}: expected family 'guided_diffusion'")
    return cfg, scales


def load_default_unet(device: torch.device | str | None = None, path: Path = UNET_PATH) -> nn.Module:
    """The bundled Fashion-MNIST diffusion UNet (eval mode, frozen), with the guidance scales tuned for it as
    ``guidance_scales`` (docs/MODEL_CARD.md); ``path``: another file of that format."""
    from mimicfast.models.loader import load_guided_diffusion, with_guidance_scales

    cfg, scales = _unet_config_and_scales(Path(path))
    return with_guidance_scales(load_guided_diffusion(path, cfg, device=device), scales)


def load_default_classifier(device: torch.device | str | None = None, path: Path = CLASSIFIER_PATH) -> nn.Module:
    """The bundled Fashion-MNIST CNN (eval mode, frozen): ``[N, 1, 32, 32]`` in [0, 1] -> logits [N, 10].

    ``path``: another ``FashionCNN`` safetensors file with its ``{"width": ...}`` JSON beside it.
    """
    from mimicfast.classifier import FashionCNN
    from mimicfast.models.loader import load_state_dict_file

    path = Path(path)
    meta = _config(path)
    model = FashionCNN(width=int(meta["width"]))
    try:
        model.load_state_dict(load_state_dict_file(path), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not match FashionCNN(width={meta['width']}): {exc}") from exc
    return model.to(device or "cpu").eval().requires_grad_(False)


def load_default(device: torch.device | str | None = None) -> tuple[nn.Module, nn.Module]:
    """``(diffusion_model, classifier)``: the bundled Fashion-MNIST UNet and CNN, ready for the demo.

    >>> model, classifier = mimicfast.load_default()
    >>> x, y = mimicfast.default.load_test_slice(16)
    >>> x_pur = mimicfast.purify(x, model, preset="paper", steps=100)
    """
    return load_default_unet(device), load_default_classifier(device)


def load_test_slice(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all 1,000) bundled test images: ``(x [n, 1, 32, 32] in [0, 1], y [n] int64)``."""
    with np.load(TEST_SLICE_PATH) as f:
        images, labels = f["images"], f["labels"]
    if n is not None and not 1 <= n <= len(labels):
        raise InputError(f"n must be in [1, {len(labels)}], got {n}")
    return to_tensor32(images[:n]), torch.from_numpy(labels[:n].astype(np.int64))


def to_tensor32(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` (or already 32x32) -> float32 ``[N, 1, 32, 32]`` in [0, 1], zero-padded by 2 pixels."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0).unsqueeze(1)
    if x.shape[-1] == 28:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    if x.shape[-2:] != (32, 32):
        raise InputError(f"expected 28x28 or 32x32 images, got {tuple(images.shape[1:])}")
    return x
