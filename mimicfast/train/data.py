"""Fashion-MNIST from the Debian ``dataset-fashion-mnist`` idx files, as 32x32 tensors in [0, 1].

The idx format (LeCun et al.): a big-endian header -- magic ``0x00000803`` (uint8 images, 3 dims) or
``0x00000801`` (uint8 labels, 1 dim) followed by one uint32 per dimension -- then the raw uint8 data.
Images are 28x28; they are zero-padded by 2 pixels on every side to 32x32 so that a UNet with three
resolutions (32, 16, 8) fits them (:func:`mimicfast.default.to_tensor32`).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from mimicfast.default import to_tensor32
from mimicfast.errors import InputError

#: Where the Debian package ``dataset-fashion-mnist`` installs the idx files; override with
#: the ``MIMICFAST_FMNIST_DIR`` environment variable.
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Class names, index = label.
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one (optionally gzipped) idx file of uint8 data into an array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise InputError(f"{path}: too short to be an idx file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise InputError(f"{path}: not a uint8 idx file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise InputError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw Fashion-MNIST split: ``(images uint8 [N, 28, 28], labels uint8 [N])``."""
    if split not in _FILES:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root or os.environ.get("MIMICFAST_FMNIST_DIR", DEFAULT_DIR))
    img_name, lab_name = _FILES[split]
    if not (root / img_name).is_file():
        raise InputError(
            f"Fashion-MNIST not found in {root} (install the Debian package dataset-fashion-mnist "
            "or set MIMICFAST_FMNIST_DIR)"
        )
    images, labels = read_idx(root / img_name), read_idx(root / lab_name)
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def fashion_mnist_tensors(split: str = "train", root: str | os.PathLike | None = None):
    """``(x float32 [N, 1, 32, 32] in [0, 1], y int64 [N])`` for a Fashion-MNIST split."""
    images, labels = load_fashion_mnist(split, root)
    return to_tensor32(images), torch.from_numpy(labels.astype(np.int64))
