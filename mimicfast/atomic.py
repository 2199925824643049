"""Atomic file writes: the one way the package writes a file.

:func:`write_atomic` writes a temporary file beside the target, fsyncs it, renames it over the target and fsyncs
the folder, so a kill, a crash or a full disk leaves either the old file or the complete new one, never a torn
one. :func:`write_text` and :func:`save_torch` are its two common uses.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["remove_unfinished_writes", "save_torch", "write_atomic", "write_text"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, and rename it over ``path``.

    The temporary name is fresh (never an existing file); on any error it is removed and ``path`` is untouched.
    The new file gets the usual permissions (0666 less the umask); the folder is fsynced after the rename.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_unfinished_writes(path: str | os.PathLike[str]) -> None:
    """Remove the temporary files a killed :func:`write_atomic` of ``path`` left beside it (a kill between creating
    the temporary file and the rename leaves one behind). Only a writer that alone writes ``path`` may call this."""
    path = Path(path)
    for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)), glob.escape(_temporary_prefix(path)) + "*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _temporary_prefix(path: Path) -> str:
    return f".{path.name[:64]}."


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def save_torch(obj: object, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path``, atomically (:func:`write_atomic`)."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse fsync on folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
