"""Reading checkpoint and config files without hanging, exhausting memory or changing the process.

Every file the loader reads goes through here before any parser sees it:

* :func:`open_regular` stats the path and refuses anything but a regular file (a FIFO would block forever, a
  device such as ``/dev/zero`` never ends, a directory is not a file), refuses sizes over a limit, then opens the
  file non-blocking (so a path swapped for a FIFO in between cannot block either) and checks the opened
  descriptor again. The returned :class:`BoundedReader` never reads past the size the file had when it was
  opened, so a length field inside the file cannot make a parser allocate more than the file holds.
* :func:`read_json` bounds a config's size and nesting depth before parsing it.
* :func:`check_pickle` walks a pickle's opcodes without building any object and refuses streams whose object
  tree is too deep or too large, counting shared references as copies (what hashing, printing or a recursive
  walk would visit: a few hundred bytes of memoised tuples can describe 2**100 nodes); it also refuses a BUILD
  (``__setstate__`` / attribute update) on anything but an object the pickle itself created, so a pickle cannot
  rewrite the classes and functions its unpickler hands out, and an object changed after another one referenced
  it (cycles). :func:`check_torch_legacy` applies it to the pickles of a legacy (pre-zip) ``torch.save`` stream.
* :func:`read_torch` is ``torch.load(weights_only=True)`` after those walks. torch's zip format has its
  ``data.pkl`` walked and its tensor data memory-mapped when the archive stores its members uncompressed (what
  ``torch.save`` writes). A DEFLATE-compressed archive (a ``torch.save`` file re-zipped: ``torch.load`` reads it)
  cannot be memory-mapped, since a map shows the compressed bytes, so it is inflated instead, within a bound on
  how far it may expand; other zip compressions are refused.

Nothing here executes code from a file; failures raise :class:`~mimicfast.errors.CheckpointError` (one line).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import stat
import zipfile
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO

from mimicfast.errors import CheckpointError

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_PICKLE_DEPTH",
    "MAX_PICKLE_NODES",
    "MAX_PICKLE_OPS",
    "BoundedReader",
    "check_pickle",
    "check_torch_legacy",
    "one_line",
    "open_regular",
    "read_json",
    "read_torch",
]

# The largest public diffusion checkpoints are a few GB (guided-diffusion's 512x512 model: 2.1 GB).
MAX_CHECKPOINT_BYTES = 64 * 2**30
MAX_CONFIG_BYTES = 2**20
MAX_JSON_DEPTH = 32
# Real checkpoints stay far below these: an EDM network pickle takes ~75 opcodes and ~40 nodes per tensor, its
# deepest object is ~40 levels down; torch's zip format keeps tensor data out of the pickle.
MAX_PICKLE_OPS = 2_000_000
MAX_PICKLE_DEPTH = 200
MAX_PICKLE_NODES = 2_000_000
_MAX_TORCH_PICKLE_BYTES = 256 * 2**20  # data.pkl of torch's zip format: structure only, tensor data is separate
# A compressed archive is inflated in memory. DEFLATE expands up to ~1000x, so a small file could ask for far
# more memory than it holds; real weights compress by a few percent, so 100x (or 64 MiB for tiny files) is
# generous for them and still bounds what a file can make the reader allocate.
_MAX_INFLATE_RATIO = 100
_MIN_INFLATE_BYTES = 64 * 2**20


def one_line(error: BaseException | str, limit: int = 200) -> str:
    """A foreign error message (torch, numpy, zipfile, ...) as one line of at most ``limit`` characters, for
    embedding in a CheckpointError."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BoundedReader(io.RawIOBase):
    """A read-only, seekable view of an opened regular file that never reads past ``size`` bytes.

    ``path`` is the name the file was opened under; :attr:`fd_path` names the very file that is open (on Linux
    ``/proc/self/fd/N``), for libraries that insist on opening a path themselves.
    """

    def __init__(self, file: BinaryIO, size: int, path: Path) -> None:
        super().__init__()
        self._file = file
        self.size = size
        self.path = path

    @property
    def fd_path(self) -> str:
        proc = f"/proc/self/fd/{self._file.fileno()}"
        return proc if os.path.exists(proc) else str(self.path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def _left(self, n: int | None) -> int:
        left = max(0, self.size - self._file.tell())
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self._file.read(self._left(n))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        return self._file.readinto(view[: self._left(len(view))])

    def readline(self, size: int | None = -1) -> bytes:
        return self._file.readline(self._left(size))

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def _describe(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | PathLike[str], *, max_bytes: int, what: str = "checkpoint") -> BoundedReader:
    """Open a regular file for bounded reading (symlinks to regular files are followed).

    Raises:
        FileNotFoundError: nothing at ``path`` (the message names it).
        CheckpointError: ``path`` is a directory, FIFO, device or socket, is larger than ``max_bytes``, cannot be
            opened, or changed between the checks.
    """
    path = Path(path)
    try:
        before = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if not stat.S_ISREG(before.st_mode):
        raise CheckpointError(f"{path}: is {_describe(before.st_mode)}, expected a {what} file")
    if before.st_size > max_bytes:
        raise CheckpointError(f"{path}: {before.st_size} bytes, more than the {max_bytes} a {what} file may have")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open the {what}: {e.strerror}") from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise CheckpointError(f"{path}: the file changed while it was being opened")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return BoundedReader(os.fdopen(fd, "rb"), min(opened.st_size, max_bytes), path)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth(text: str) -> int:
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def read_json(path: str | PathLike[str]) -> Any:
    """Parse a JSON config file of at most :data:`MAX_CONFIG_BYTES` and :data:`MAX_JSON_DEPTH` levels.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a regular file, too large, too deeply nested, not UTF-8 or not JSON.
    """
    with open_regular(path, max_bytes=MAX_CONFIG_BYTES, what="config") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"config {path}: not a readable JSON file (not UTF-8 text)") from None
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"config {path}: JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, and int() of an over-long number
        raise CheckpointError(f"config {path}: not a readable JSON file ({one_line(e)})") from None


class _Node:
    """What the pickle walk knows about one object: nesting depth, tree size (shared references counted as
    copies), how it came to be, and whether another object already references it."""

    __slots__ = ("depth", "kind", "referenced", "size")

    def __init__(self, kind: str, depth: int = 0, size: int = 1) -> None:
        self.kind = kind
        self.depth = depth
        self.size = size
        self.referenced = False


_MARK = object()
_CREATED, _GLOBAL, _DATA = "created", "global", "data"
_CREATORS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ", "PERSID", "BINPERSID"}
_GLOBALS = {"GLOBAL", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
_MARK_MUTATORS = {"APPENDS", "SETITEMS", "ADDITEMS"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


class _PickleWalk:
    """The unpickler's stack machine over :class:`_Node` summaries instead of objects."""

    def __init__(self, what: str) -> None:
        self.what = what  # message prefix, may be empty
        self.stack: list[Any] = []
        self.memo: dict[int, _Node] = {}

    def _pop_mark(self) -> list[_Node]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise ValueError("MARK missing")

    def _top(self) -> _Node:
        node = self.stack[-1]
        if node is _MARK:
            raise ValueError("object expected, MARK found")
        return node

    def _check(self, node: _Node) -> _Node:
        if node.depth > MAX_PICKLE_DEPTH:
            raise CheckpointError(f"{self.what}objects nested more than {MAX_PICKLE_DEPTH} levels deep")
        if node.size > MAX_PICKLE_NODES:
            raise CheckpointError(
                f"{self.what}an object tree of more than {MAX_PICKLE_NODES} nodes (counting shared references)"
            )
        return node

    def _reference(self, items: list[Any]) -> tuple[int, int]:
        if any(item is _MARK for item in items):
            raise ValueError("unexpected MARK")
        for item in items:
            item.referenced = True
        return 1 + max((i.depth for i in items), default=0), sum(i.size for i in items)

    def _mutate(self, name: str) -> None:
        if name in _MARK_MUTATORS:
            items = self._pop_mark()
        else:  # SETITEM pops key and value, APPEND and BUILD one object
            items = [self.stack.pop() for _ in range(2 if name == "SETITEM" else 1)]
        target = self._top()
        if name == "BUILD" and target.kind != _CREATED:
            raise CheckpointError(
                f"{self.what}refusing BUILD (state update) on an object the file did not create "
                f"({'a class or function of the loader' if target.kind == _GLOBAL else 'built-in data'})"
            )
        depth, size = self._reference(items)
        if target.referenced and items:
            raise CheckpointError(f"{self.what}an object is changed after another object references it (a cycle)")
        target.depth, target.size = max(target.depth, depth), target.size + size
        self._check(target)

    def step(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        name, stack = op.name, self.stack
        if name in _PUTS:
            self.memo[arg] = self._top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self._top()
        elif name in _GETS:
            stack.append(self.memo[arg])
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "DUP":
            stack.append(self._top())
        elif name == "POP":
            stack.pop()
        elif name in ("APPEND", "SETITEM", "BUILD") or name in _MARK_MUTATORS:
            self._mutate(name)
        else:
            before = op.stack_before
            if pickletools.markobject in before:
                items = self._pop_mark()
                items += [stack.pop() for _ in range(before.index(pickletools.markobject))]
            else:
                items = [stack.pop() for _ in before]
            depth, size = self._reference(items)
            kind = _CREATED if name in _CREATORS else _GLOBAL if name in _GLOBALS else _DATA
            for _ in op.stack_after:
                stack.append(self._check(_Node(kind, depth, 1 + size)))


def check_pickle(stream: BinaryIO, what: str) -> None:
    """Walk one pickle (up to its STOP) and enforce the bounds in the module docstring; builds no object.

    Leaves ``stream`` just after the STOP opcode. ``what`` (if not empty) prefixes error messages.

    Raises:
        CheckpointError: a bound is exceeded, a BUILD targets an object the pickle did not create, or the
            stream is not a well-formed pickle (truncated, unknown opcode, stack underflow).
    """
    what = f"{what}: " if what else ""
    walk = _PickleWalk(what)
    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(stream), 1):
            if count > MAX_PICKLE_OPS:
                raise CheckpointError(f"{what}a pickle of more than {MAX_PICKLE_OPS} opcodes")
            walk.step(op, arg)
    except CheckpointError:
        raise
    except (ValueError, IndexError, KeyError, EOFError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{what}truncated or corrupt pickle: {type(e).__name__}: {one_line(e)}") from None


def check_torch_legacy(stream: BinaryIO, what: str) -> None:
    """:func:`check_pickle` on the (up to) five pickles a legacy ``torch.save`` stream starts with (magic number,
    protocol, system info, the object, storage keys); the raw tensor data that follows is not pickled. A stream
    that ends earlier is left for torch to refuse."""
    for _ in range(5):
        check_pickle(stream, what)
        here = stream.tell()
        if not stream.read(1):
            return
        stream.seek(here)


def read_torch(f: BoundedReader) -> Any:
    """``torch.load(weights_only=True)`` of an opened file (zip or legacy format), after the checks in the module
    docstring; the object is returned as stored (tensors on the CPU).

    Raises:
        CheckpointError: one line naming ``f.path``: empty, a Git LFS pointer, truncated or corrupt, a pickle
            that needs code or exceeds the structure bounds, a zip member compressed other than by DEFLATE, or a
            compressed archive that would inflate beyond its bound.
    """
    import torch

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
        check_torch_legacy(f, "not a readable PyTorch file")  # pre-1.6 format: pickles, then raw storages
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
            f"{path}: not a readable PyTorch file (truncated or corrupt?): {_reason(msg)}"
        ) from None
    except Exception as e:  # noqa: BLE001 -- torch's reader of a hostile file may fail in any way (AssertionError...)
        reason = _reason(str(e)) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {one_line(e)}"
        raise CheckpointError(f"{path}: not a readable PyTorch file (truncated or corrupt?): {reason}") from None


def _check_torch_zip(f: BoundedReader) -> bool:
    """Walk the ``<archive>/data.pkl`` of a torch zip checkpoint (:func:`check_pickle`) before torch reads it, and
    say whether its tensor data may be memory-mapped (True: every member is stored uncompressed)."""
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(
            "not a readable PyTorch file (truncated or corrupt?): zip archive without its central "
            "directory (truncated download?)"
        ) from None
    names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise CheckpointError("not a readable PyTorch file: a zip archive without torch's <archive>/data.pkl")
    members = archive.infolist()
    odd = next((m for m in members if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)), None)
    if odd is not None:
        raise CheckpointError(
            f"zip member {repr(odd.filename[:80])} uses compression method {odd.compress_type}; torch reads only "
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
            f"not a readable PyTorch file (truncated or corrupt?): data.pkl: {one_line(e)}"
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
