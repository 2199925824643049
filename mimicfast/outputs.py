"""Where a command writes: output paths checked before the first byte, and the pictures it writes.

* **Nothing read is overwritten.** :func:`check_outputs` compares every output path with every file the command
  reads by identity (device and inode, so hard links, symlinks and ``..`` spellings are caught), before the
  first byte is written.
* **Folders are checked without writing.** :func:`check_writable_dir` refuses a path under a non-folder, on a
  read-only file system or without write permission; :func:`fit_name` keeps file names within the file
  system's limit.
* **Writes are atomic** (:func:`mimicfast.atomic.write_atomic`): a kill or a full disk leaves either the old
  file or the complete new one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mimicfast.atomic import write_atomic
from mimicfast.errors import InputError

if TYPE_CHECKING:
    import torch


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


def write_png(image: torch.Tensor, path: Path) -> None:
    """Write one [C, H, W] image in [0, 1] as an 8-bit PNG, atomically (:func:`write_atomic`)."""
    import torch
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    write_atomic(path, lambda f: picture.save(f, format="PNG"))
