"""Files of the command line: safe reads of inputs, checks of outputs, atomic writes.

Three rules hold for every command that uses this module:

* **Reads are bounded.** :func:`open_input` opens regular files only (a FIFO, a device such as /dev/zero or a
  directory is refused without blocking), and no reader reads more than the file's size. Pictures are checked
  from their header (size, mode) before any pixel is decoded; ``.npy`` headers are checked against the file size
  before any array is allocated.
* **Nothing read is overwritten.** :func:`check_outputs` compares every output path with every file the command
  reads by identity (device and inode, so hard links, symlinks and ``..`` spellings are caught), before the
  first byte is written.
* **Writes are atomic.** :func:`mimicfast.atomic.write_atomic` writes a temporary file beside the target, fsyncs it and renames it
  over the target, so a kill or a full disk leaves either the old file or the complete new one.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mimicfast.atomic import write_atomic
from mimicfast.errors import CheckpointError, InputError
from mimicfast.safe_read import BoundedReader, open_regular

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


# ---------------------------------------------------------------------------------------------- safe reads


def open_input(path: Path, max_bytes: int = MAX_INPUT_BYTES) -> BoundedReader:
    """Open an input for bounded reading through the loader's :func:`mimicfast.safe_read.open_regular`:
    a regular file of at most ``max_bytes`` bytes (a FIFO, device or folder is refused without blocking), never
    read past the size it had when opened. Raises InputError naming the problem, FileNotFoundError."""
    try:
        return open_regular(path, max_bytes=max_bytes, what="picture or batch")
    except CheckpointError as exc:
        raise InputError(str(exc)) from None


FileId = tuple[int, int]


def file_id(path: Path) -> FileId | None:
    """``(device, inode)`` of the file ``path`` names (following symlinks), or None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def files_read_by_load(checkpoint: Path, config: str | None) -> list[Path]:
    """Every file :func:`mimicfast.models.load` may read for ``checkpoint`` and ``config``: the checkpoint (every
    file of it when it is a folder), a config given as a path, and the ``<stem>.json`` beside the checkpoint."""
    files = [checkpoint, checkpoint.with_suffix(".json")]
    if config is not None:
        files.append(Path(config))
    if checkpoint.is_dir():
        files.extend(p for p in sorted(checkpoint.rglob("*"))[:10_000] if p.is_file())
    return files


# ---------------------------------------------------------------------------------------------- outputs


def check_writable_dir(folder: Path, what: str) -> None:
    """Check that ``folder`` is, or can be created as, a folder this process can write, without writing.

    Raises InputError naming the problem: an existing non-folder on the way (``-o afile/sub``), a read-only
    file system, or no write permission.
    """
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"{what} {folder}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what} {folder}: {probe} exists and is not a folder")
    try:
        writable = os.access(probe, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    except OSError as exc:  # pragma: no cover - access() itself failing
        raise InputError(f"{what} {folder}: {exc.strerror}") from None
    if not writable:
        try:
            read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        reason = "is on a read-only file system" if read_only else "is not writable"
        raise InputError(f"{what} {folder}: {probe} {reason}")


def name_max(folder: Path) -> int:
    """Longest file name (bytes) allowed in ``folder`` or its nearest existing parent (255 if unknown)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def fit_name(name: str, suffix: str, limit: int) -> str:
    """``name + suffix`` if it fits in ``limit`` bytes, else ``name`` cut short plus 8 hex digits of its hash
    (so that two long names that share a beginning still get different files) plus ``suffix``."""
    if len((name + suffix).encode()) <= limit:
        return name + suffix
    tag = "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    room = limit - len((tag + suffix).encode())
    cut = name.encode()[: max(room, 0)].decode(errors="ignore")
    return cut + tag + suffix


def check_outputs(outputs: Iterable[Path], reads: Iterable[Path]) -> None:
    """Refuse if any output would replace a file that is read (same device and inode), or is a folder."""
    read_ids = {}
    for path in reads:
        fid = file_id(path)
        if fid is not None:
            read_ids.setdefault(fid, path)
    for out in outputs:
        if out.is_dir():
            raise InputError(f"output {out} exists and is a folder")
        fid = file_id(out)
        if fid is not None and fid in read_ids:
            same = "" if Path(os.path.abspath(out)) == Path(os.path.abspath(read_ids[fid])) else f" ({read_ids[fid]})"
            raise InputError(f"output {out} would overwrite a file this command reads{same}; choose another output")


# ---------------------------------------------------------------------------------------------- inputs


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


@dataclass(frozen=True)
class Geometry:
    """How inputs are fitted to the model: ``channels`` C and ``size`` S (None: any) of the model;
    ``resize``: scale and center-crop to S; ``pad``: zero-pad smaller inputs to S; ``grey``: colour -> luma."""

    channels: int
    size: int | None
    resize: bool = False
    pad: bool = False
    grey: bool = False


def read_inputs(paths: list[Path], geometry: Geometry) -> tuple[torch.Tensor, list[str]]:
    """Read and check every input: one float32 batch [N, C, S, S] in [0, 1] and one unique name per image.

    Pictures give one image named by the file's stem; ``.npy`` / ``.pt`` batches ([N, C, H, W], [C, H, W] or
    grey [N, H, W] / [H, W]; uint8, or float in [0, 1]) give images named ``<stem>_0000``, ``<stem>_0001``, ...
    Raises InputError naming the file and the problem (nothing is partially accepted).
    """
    import torch

    if geometry.size is not None and geometry.size * geometry.size > MAX_PIXELS:
        raise InputError(f"the model's image size {geometry.size} is larger than the {MAX_PIXELS} pixels accepted")
    images, names, owner = [], [], {}
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            batch, batch_names = _read_picture(path, geometry), [path.stem]
        elif suffix in BATCH_SUFFIXES:
            batch = _read_batch(path)
            batch_names = [f"{path.stem}_{i:04d}" for i in range(batch.shape[0])]
        else:
            raise InputError(f"{path}: unsupported input type {path.suffix!r} (PNG/JPEG/BMP/WebP, .npy or .pt)")
        batch = _fit(_match_channels(batch, geometry, path), geometry, path, picture=suffix in IMAGE_SUFFIXES)
        _check_values(batch, path)
        for name in batch_names:
            if name in owner:
                raise InputError(f"{owner[name]} and {path} give the same image name {name!r}; outputs would collide")
            owner[name] = path
        images.append(batch)
        names.extend(batch_names)
    if not images:
        raise InputError("no input images")
    return torch.cat(images), names


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
                obj = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 -- any unpickling failure is a bad input file
                raise InputError(f"{path}: not a tensor file loadable without executing code ({exc})") from None
        tensor = obj.get("images") if isinstance(obj, dict) else obj
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{path}: expected a tensor (or a dict with 'images'), got {type(obj).__name__}")
        if tensor.layout != torch.strided:
            raise InputError(f"{path}: holds a {tensor.layout} tensor; store dense images")
        if tensor.is_meta:
            raise InputError(f"{path}: holds a meta tensor (no values)")
        tensor = tensor.detach()
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise InputError(f"{path}: expected uint8 or float images, got dtype {tensor.dtype}")
    if not 2 <= tensor.dim() <= 4:
        raise InputError(f"{path}: expected images [N, C, H, W], [C, H, W] or [H, W], got shape {tuple(tensor.shape)}")
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
        raise InputError(f"{path}: colour image(s) for a grey (1-channel) model; pass --grey to convert them to grey")
    raise InputError(f"{path}: the model takes {want} channels, got {have} (shape {tuple(batch.shape)})")


def _as_nchw(array: torch.Tensor, channels: int, path: Path) -> torch.Tensor:
    """[N, C, H, W] from [N, C, H, W], [C, H, W] (C in 1, 3, 4 or the model's), or grey [N, H, W] / [H, W]."""
    if array.dim() == 2:
        return array[None, None]
    if array.dim() == 3:
        if array.shape[0] == channels or (channels != 1 and array.shape[0] in (1, 3)):
            return array[None]
        if channels == 1:
            return array[:, None]
        raise InputError(f"{path}: expected images [N, C, H, W] or [C, H, W], got shape {tuple(array.shape)}")
    return array


def _check_size(h: int, w: int, geometry: Geometry, path: Path, *, picture: bool) -> None:
    size = geometry.size
    if (h, w) == (size, size) or (geometry.pad and h <= size and w <= size):
        return
    if geometry.pad:
        raise InputError(f"{path}: {h}x{w} is larger than the model's {size}x{size}; cannot pad")
    hint = " (pass --pad to zero-pad, or --resize to resize and center-crop)" if picture else " (pass --pad or --resize)"
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


def _check_values(batch: torch.Tensor, path: Path) -> None:
    """Finite and in [0, 1] (the API's checks, with the file named)."""
    from mimicfast.api import validate_images

    try:
        validate_images(batch)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------- outputs


def write_png(image: torch.Tensor, path: Path) -> None:
    """Write one [C, H, W] image in [0, 1] as an 8-bit PNG, atomically (:func:`write_atomic`)."""
    import torch
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    write_atomic(path, lambda f: picture.save(f, format="PNG"))
