"""Reading the images a command is given: pictures, ``.npy`` / ``.pt`` batches and folders of them.

* **Reads are bounded.** :func:`open_input` opens regular files only (a FIFO, a device such as /dev/zero or a
  directory is refused without blocking), and no reader reads more than the file's size. Pictures are checked
  from their header (size, mode) before any pixel is decoded; ``.npy`` headers are checked against the file size
  before any array is allocated.
* **Everything is checked before anything is used.** :func:`read_inputs` returns one float32 batch in [0, 1]
  fitted to the model (channels, size), or raises InputError naming the file and the problem.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mimicfast.errors import CheckpointError, InputError
from mimicfast.safe_read import BoundedReader, open_regular, read_torch
from mimicfast.validate import check_channels, check_dense, check_images

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
BATCH_SUFFIXES = {".npy", ".pt", ".pth"}
#: Largest picture accepted, in pixels (width x height, read from the header): 2**25, about 33.5 megapixels
#: (8192 x 4096); decoded to float32 RGB that is 403 MB.
MAX_PIXELS = 2**25
#: Largest input file read, in bytes (a .npy / .pt batch): 16 GiB.
MAX_INPUT_BYTES = 16 << 30
#: ITU-R 601-2 luma weights, the ones PIL's convert("L") uses, for --grey.
LUMA = (0.299, 0.587, 0.114)
# PIL modes whose pixels are grey levels, with the value of full white.
_GREY_MODES = {"1": 1, "L": 255, "LA": 255, "La": 255, "I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def open_input(path: Path, max_bytes: int = MAX_INPUT_BYTES) -> BoundedReader:
    """Open an input for bounded reading through the loader's :func:`mimicfast.safe_read.open_regular`:
    a regular file of at most ``max_bytes`` bytes (a FIFO, device or folder is refused without blocking), never
    read past the size it had when opened. Raises InputError naming the problem, FileNotFoundError."""
    try:
        return open_regular(path, max_bytes=max_bytes, what="picture or batch")
    except CheckpointError as exc:
        raise InputError(str(exc)) from None


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Input paths with every folder replaced by the pictures and batches directly inside it (sorted by name;
    hidden files and other file types are skipped). A folder with none of them is an error."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(
                p for p in path.iterdir()
                if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES | BATCH_SUFFIXES
            )
            if not inside:
                raise InputError(f"{path}: folder holds no PNG/JPEG/BMP/WebP picture and no .npy/.pt batch")
            files.extend(inside)
        elif not path.exists():
            raise InputError(f"input not found: {path}")
        else:
            files.append(path)
    return files


LAYOUTS = "[N, C, H, W], [C, H, W], grey [N, H, W] or one grey [H, W] image"
"""The array layouts a ``.npy`` / ``.pt`` batch may have (C is 1, 3, or the model's channel count)."""


@dataclass(frozen=True)
class Geometry:
    """How inputs are fitted to the model: ``channels`` C and ``size`` S (None: any) of the model;
    ``resize``: scale and center-crop to S; ``pad``: zero-pad smaller inputs to S; ``grey``: colour -> luma.

    ``options`` names the caller's command-line options that fix a mismatch (any of ``"--pad"``, ``"--resize"``,
    ``"--grey"``); error messages suggest only those, so a command is never told to pass an option it lacks.
    """

    channels: int
    size: int | None
    resize: bool = False
    pad: bool = False
    grey: bool = False
    options: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decoded:
    """What :func:`decode_inputs` read: ``images`` [N, C, S, S] float32 in [0, 1], one unique name per image,
    and each image's ``(height, width)`` before it was fitted to the model."""

    images: torch.Tensor
    names: list[str]
    sizes: list[tuple[int, int]]


def read_inputs(paths: list[Path], geometry: Geometry) -> tuple[torch.Tensor, list[str]]:
    """``(images, names)`` of :func:`decode_inputs`."""
    decoded = decode_inputs(paths, geometry)
    return decoded.images, decoded.names


def decode_inputs(paths: list[Path], geometry: Geometry) -> Decoded:
    """Read and check every input: one float32 batch [N, C, S, S] in [0, 1] and one unique name per image.

    Pictures give one image named by the file's stem; ``.npy`` / ``.pt`` batches (:data:`LAYOUTS`; uint8, or
    float in [0, 1]) give images named ``<stem>_0000``, ``<stem>_0001``, ...
    Raises InputError naming the file and the problem (nothing is partially accepted).
    """
    import torch

    if geometry.size is not None and geometry.size * geometry.size > MAX_PIXELS:
        raise InputError(f"the model's image size {geometry.size} is larger than the {MAX_PIXELS} pixels accepted")
    images, names, sizes, owner = [], [], [], {}
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            batch = _read_picture(path, geometry)
        elif suffix in BATCH_SUFFIXES:
            batch = _read_batch(path)
        else:
            raise InputError(
                f"{path}: unsupported input type {path.suffix!r} (PNG/JPEG/BMP/WebP pictures, .npy/.pt/.pth batches)"
            )
        batch = _match_channels(batch, geometry, path)  # [N, C, H, W]: a grey [H, W] array is one image
        if suffix in IMAGE_SUFFIXES:
            batch_names = [path.stem]
        else:
            batch_names = [f"{path.stem}_{i:04d}" for i in range(batch.shape[0])]
        sizes.extend([tuple(batch.shape[-2:])] * batch.shape[0])
        batch = _fit(batch, geometry, path, picture=suffix in IMAGE_SUFFIXES)
        try:
            check_images(batch)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        for name in batch_names:
            if name in owner:
                raise InputError(f"{owner[name]} and {path} give the same image name {name!r}; outputs would collide")
            owner[name] = path
        images.append(batch)
        names.extend(batch_names)
    if not images:
        raise InputError("no input images")
    return Decoded(torch.cat(images), names, sizes)


def _read_picture(path: Path, geometry: Geometry) -> torch.Tensor:
    """One picture as float32 [1, c, h, w] in [0, 1] (c = 1 for grey pictures, 3 for colour ones), its size
    and mode checked from the header before decoding; 16-bit pictures are scaled by 65535."""
    import numpy as np
    import torch
    from PIL import Image

    with open_input(path) as f:
        try:
            with warnings.catch_warnings():  # the size is checked below, against MAX_PIXELS
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(f)
            width, height = img.size
            mode = img.mode
        except Image.DecompressionBombError:
            raise InputError(f"{path}: the picture has more than the {MAX_PIXELS} pixels accepted") from None
        except Exception as exc:  # noqa: BLE001 -- PIL raises many types on malformed headers
            raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
        if width * height > MAX_PIXELS:
            raise InputError(f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS} accepted")
        if geometry.size is not None and not geometry.resize:
            _check_size(height, width, geometry, path, picture=True)
        try:
            if mode in _GREY_MODES:
                array = np.asarray(img.convert("L") if mode in ("1", "LA", "La") else img)
                array = array.astype(np.float32) / (255.0 if mode in ("1", "LA", "La") else _GREY_MODES[mode])
                tensor = torch.from_numpy(array)[None]
            elif mode in _COLOUR_MODES:
                tensor = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            else:
                raise InputError(f"{path}: pixel mode {mode!r} is not supported (8- or 16-bit grey, RGB, RGBA, palette)")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a header that decodes to nothing valid
            raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return tensor[None].contiguous()


def _read_batch(path: Path) -> torch.Tensor:
    """A ``.npy`` or ``.pt`` batch as a 2- to 4-d tensor, uint8 or floating point, dense, on the CPU."""
    import torch

    if path.suffix.lower() == ".npy":
        tensor = _read_npy(path)
    else:
        with open_input(path) as f:
            try:
                obj = read_torch(f)
            except Exception as exc:  # noqa: BLE001 -- any unpickling failure is a bad input file
                raise InputError(f"{path}: not a tensor file loadable without executing code ({exc})") from None
        tensor = obj.get("images") if isinstance(obj, dict) else obj
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{path}: expected a tensor (or a dict with 'images'), got {type(obj).__name__}")
        try:
            tensor = check_dense(tensor, "the stored tensor").detach()
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise InputError(f"{path}: expected uint8 or float images, got dtype {tensor.dtype}")
    if not 2 <= tensor.dim() <= 4:
        raise InputError(f"{path}: expected images {LAYOUTS}, got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise InputError(f"{path}: holds no images (shape {tuple(tensor.shape)})")
    return tensor


def _read_npy(path: Path) -> torch.Tensor:
    """A ``.npy`` array read without pickle, its header (dtype, shape) checked against the file size first."""
    import numpy as np
    import torch

    with open_input(path) as f:
        size = f.size
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"format version {version} is not supported")
        except Exception as exc:  # numpy parses the header with ast/tokenize: any failure means a mangled file
            raise InputError(f"{path}: not a .npy array file ({type(exc).__name__}: {exc})") from None
        if dtype.hasobject or (dtype.kind, dtype.itemsize) not in {("u", 1), ("f", 2), ("f", 4), ("f", 8)}:
            raise InputError(f"{path}: expected uint8 or float images, got dtype {dtype}")
        count = 1
        for dim in shape:
            count *= dim
        if count * dtype.itemsize != size - f.tell():
            raise InputError(
                f"{path}: header says shape {shape} of {dtype} ({count * dtype.itemsize} bytes) but the file holds "
                f"{size - f.tell()} bytes of data"
            )
        data = bytearray(count * dtype.itemsize)  # writable, so torch can share it
        if f.readinto(data) != len(data):
            raise InputError(f"{path}: the file shrank while it was read")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if fortran or not dtype.isnative:
        array = np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
    return torch.from_numpy(array)


def _match_channels(batch: torch.Tensor, geometry: Geometry, path: Path) -> torch.Tensor:
    """[N, C, H, W] float32 in [0, 1] with the model's C: grey is repeated for colour models; colour becomes
    grey for grey models only with ``--grey`` (luma) or when its channels are equal."""
    import torch

    want = geometry.channels
    batch = _as_nchw(batch, want, path)
    batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    have = batch.shape[1]
    if have == want:
        return batch
    if have == 1:
        return batch.expand(-1, want, -1, -1).contiguous()
    if want == 1 and have == 3:
        if geometry.grey:
            weights = torch.tensor(LUMA, dtype=batch.dtype).view(1, 3, 1, 1)
            return (batch * weights).sum(1, keepdim=True)
        if torch.equal(batch[:, :1].expand_as(batch), batch):
            return batch[:, :1].contiguous()
        fix = "pass --grey to convert them" if "--grey" in geometry.options else "convert them to grey first"
        raise InputError(f"{path}: colour image(s) for a grey (1-channel) model; {fix}")
    try:
        check_channels(have, want, tuple(batch.shape))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return batch


def _as_nchw(array: torch.Tensor, channels: int, path: Path) -> torch.Tensor:
    """[N, C, H, W] from [N, C, H, W], [C, H, W] (C in 1, 3, 4 or the model's), or grey [N, H, W] / [H, W]."""
    if array.dim() == 2:
        return array[None, None]
    if array.dim() == 3:
        if array.shape[0] == channels or (channels != 1 and array.shape[0] in (1, 3)):
            return array[None]
        if channels == 1:
            return array[:, None]
        raise InputError(f"{path}: expected images {LAYOUTS}, got shape {tuple(array.shape)}")
    return array


def _check_size(h: int, w: int, geometry: Geometry, path: Path, *, picture: bool) -> None:
    size = geometry.size
    if (h, w) == (size, size) or (geometry.pad and h <= size and w <= size):
        return
    if geometry.pad:
        raise InputError(f"{path}: {h}x{w} is larger than the model's {size}x{size}; cannot pad")
    fixes = [f for f in ("--pad", "--resize") if f in geometry.options]
    hint = f" (pass {' or '.join(fixes)})" if fixes else ""
    if picture and len(fixes) == 2:
        hint = " (pass --pad to zero-pad, or --resize to resize and center-crop)"
    raise InputError(f"{path}: the model takes {size}x{size} images, got {h}x{w}{hint}")


def _fit(batch: torch.Tensor, geometry: Geometry, path: Path, *, picture: bool) -> torch.Tensor:
    """Resize + center-crop (``--resize``, antialiased bicubic, clamped to [0, 1]) or zero-pad (``--pad``) to S."""
    import torch.nn.functional as F

    size = geometry.size
    h, w = batch.shape[-2:]
    if size is None or (h, w) == (size, size):
        return batch
    if geometry.resize:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        batch = F.interpolate(batch, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        return batch[..., top : top + size, left : left + size].clamp(0, 1).contiguous()
    _check_size(h, w, geometry, path, picture=picture)
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(batch, (left, size - w - left, top, size - h - top))

