"""What an evaluation reads: the images with their labels, the classifier and the diffusion model.

Each loader also returns an identity string, a SHA-256 of the content, that goes into the run's settings, so
results of other data, weights or code never mix with a folder's rows: the bytes of data, label and TorchScript
files; the loaded network for the diffusion model; tensors, class and class source for a state-dict classifier.

A user's classifier is code: a TorchScript file is a program (it can read and write files), and
``--classifier-class`` imports a module (running its top level) and calls a constructor. Neither happens unless
the caller passes ``trust_code=True`` (``--trust-classifier-code``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mimicfast.decode import IMAGE_SUFFIXES, Geometry, open_input, read_inputs
from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.identity import model_digest, update_with_tensors
from mimicfast.safe_read import read_torch

TRUST_FLAG = "--trust-classifier-code"
# Labels index a classifier's logits; no classifier has this many classes, and every label below it is exact
# in float32, the dtype label arrays are often saved in.
MAX_LABEL = 2**24


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
    """A ``.npy`` array or ``.pt`` object read without pickle code, through the bounded safe reader (a ``.pt``
    through the checkpoint reader: pickle walked first, compressed archives inflated within a bound)."""
    with open_input(path) as f:
        try:
            if path.suffix.lower() == ".npy":
                return torch.from_numpy(np.load(f, allow_pickle=False))
            return read_torch(f)
        except CheckpointError as exc:
            raise InputError(f"not a readable .npy/.pt file: {exc}") from None
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
    y = check_labels(y, labels if labels is not None else data)
    if y.shape[0] != x.shape[0]:
        raise InputError(f"{x.shape[0]} images but {y.shape[0]} labels")
    ident = content_id(data) + ("" if labels is None else "+" + content_id(labels))
    return x, y, ident


def check_labels(labels: Any, source: Path | str) -> torch.Tensor:
    """Class labels as an int64 ``[N]`` tensor, or one InputError line naming ``source``, the first bad label and
    its index: every label must be a finite, non-negative integer below :data:`MAX_LABEL` (a float label such
    as 1.7 is refused, never rounded). Whether each is one of the classifier's classes is
    :func:`check_logits`'s to say."""
    try:
        y = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{source}: labels must be integers ({' '.join(str(exc).split())[:120]})") from None
    y = y.flatten()
    if y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{source}: labels must be integers, got dtype {str(y.dtype).removeprefix('torch.')}")
    if y.numel() == 0:
        raise InputError(f"{source}: holds no labels")
    values = y.double()  # exact for every label below MAX_LABEL; larger ones are refused below either way
    for problem, bad in (("is not a finite number", ~torch.isfinite(values)),
                         ("is not an integer", values != values.round()),
                         ("is negative", values < 0),
                         (f"is not below {MAX_LABEL}", values >= MAX_LABEL)):
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise InputError(f"{source}: label {_number(values[i].item())} at index {i} {problem}")
    return values.long()


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)


def check_logits(logits: Any, labels: torch.Tensor, n: int) -> int:
    """Check a classifier's output on a batch of ``n`` images against the run's labels, before anything is
    scored: ``logits`` must be a floating-point ``[n, K]`` tensor of finite values with ``K`` above every label in
    ``labels`` (all labels the run will score, not only this batch's). Cheap enough to call on every batch.

    Returns:
        ``K``, the classifier's number of classes.

    Raises:
        InputError: one line saying what the classifier returned and what was expected.
    """
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"the classifier returned a {type(logits).__name__}, expected logits [N, classes]")
    shape = list(logits.shape)
    if logits.dim() != 2 or shape[0] != n:
        raise InputError(f"the classifier returned shape {shape} for {n} images, expected logits [{n}, classes]")
    if not logits.is_floating_point():
        raise InputError(f"the classifier returned {str(logits.dtype).removeprefix('torch.')} logits, "
                         "expected floating point")
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        row = int((~finite).any(dim=1).nonzero()[0])
        raise InputError(f"the classifier returned non-finite logits (NaN or Inf) for image {row} of the batch")
    classes, top = shape[1], int(labels.max()) if labels.numel() else -1
    if top >= classes:
        i = int((labels >= classes).nonzero()[0])
        raise InputError(f"label {int(labels[i])} of image {i} is not one of the classifier's {classes} classes "
                         f"(0..{classes - 1})")
    return classes


def _read_labels(path: Path, names: list[str] | None) -> Any:
    """The labels a file holds, as stored (:func:`check_labels` checks them)."""
    if not path.exists():
        raise FileNotFoundError(f"--labels not found: {path}")
    if path.suffix.lower() in (".npy", ".pt", ".pth"):
        return _load_tensor_file(path)
    with open_input(path) as f:  # a regular file of bounded size
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: a labels file must be .npy, .pt or UTF-8 text") from None
    lines = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
    try:
        if all(len(parts) == 1 for parts in lines):
            return [int(parts[0]) for parts in lines]
        by_name = {Path(parts[0]).stem: int(parts[-1]) for parts in lines}
    except ValueError as exc:
        raise InputError(f"{path}: expected integer labels ({exc})") from None
    if names is None:
        raise InputError(f"{path}: '<file name> <label>' lines need a folder of images as --data")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{path}: no label for {', '.join(missing[:5])}")
    return [by_name[n] for n in names]


def load_classifier(path: Path | None, class_path: str | None = None, kwargs: dict | None = None,
                    device: str = "cpu", trust_code: bool = False) -> tuple[nn.Module, str]:
    """``(classifier in eval mode with frozen parameters, identity)``: ``x [B, C, H, W] in [0, 1] -> logits``.

    ``path`` None is the bundled Fashion-MNIST CNN. With ``class_path`` (``"package.module:Class"``, an
    ``nn.Module`` subclass) ``path`` is a state dict loaded strictly into ``Class(**kwargs)``; without it, a
    TorchScript file (``torch.jit.save``). Both run the user's code, so both need ``trust_code``. The identity is
    :func:`classifier_identity`.

    Raises:
        InputError: ``trust_code`` is False for a user's classifier (the message names
            ``--trust-classifier-code``); ``class_path`` is not ``module:Class``, cannot be imported, or is not an
            ``nn.Module`` subclass (refused before it is called); the constructor fails; the file is not
            TorchScript or does not match the class.
        CheckpointError: an unreadable or refused state dict file.
        FileNotFoundError: no file at ``path``.
    """
    if path is None:
        from mimicfast.default import CLASSIFIER_PATH, load_default_classifier

        return load_default_classifier(device), "bundled:" + content_id(CLASSIFIER_PATH)
    if not path.exists():
        raise FileNotFoundError(f"--classifier not found: {path}")
    if not trust_code:
        what = "a TorchScript classifier is a program (it can read and write any file)" if class_path is None \
            else f"--classifier-class {class_path!r} imports and runs Python code"
        raise InputError(f"{path}: {what}; pass {TRUST_FLAG} to run it")
    if class_path is None:
        with open_input(path) as f:  # a regular file of bounded size (a FIFO would block torch's reader)
            try:
                model = torch.jit.load(f, map_location=device)
            except (RuntimeError, ValueError) as exc:
                raise InputError(f"{path}: not a TorchScript file; for a state dict pass --classifier-class "
                                 f"module:Class ({' '.join(str(exc).split())[:200]})") from None
        ident = classifier_identity(path)
    else:
        from mimicfast.models.loader import load_state_dict_file

        cls = _classifier_class(class_path)
        try:
            model = cls(**(kwargs or {}))
        except Exception as exc:  # noqa: BLE001 -- the user's constructor may fail in any way
            raise InputError(f"--classifier-class {class_path}(**{json.dumps(kwargs or {})}) failed: "
                             f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
        state = load_state_dict_file(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(f"{path}: does not match {class_path}: {' '.join(str(exc).split())[:300]}") from None
        ident = classifier_identity(path, cls, kwargs, state)
    model = model.to(device).eval()
    for param in model.parameters():  # ScriptModules have no requires_grad_()
        param.requires_grad_(False)
    return model, ident


def _classifier_class(class_path: str) -> type[nn.Module]:
    """Import ``module:Class`` and make sure it names an ``nn.Module`` subclass (``os:system`` is refused here,
    before anything but the module's import has run)."""
    module_name, _, cls_name = class_path.partition(":")
    if not module_name or not cls_name:
        raise InputError(f"--classifier-class {class_path!r}: expected MODULE:CLASS, e.g. mypkg.nets:ResNet18")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"--classifier-class {class_path!r}: cannot import {module_name} ({exc})") from None
    cls = module
    for part in cls_name.split("."):  # a nested class: Outer.Inner
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        what = "nothing" if cls is None else f"a {type(cls).__name__}"
        raise InputError(f"--classifier-class {class_path!r} names {what}, not a torch.nn.Module subclass")
    return cls


def classifier_identity(path: Path, cls: type[nn.Module] | None = None, kwargs: Mapping[str, Any] | None = None,
                        state: Mapping[str, torch.Tensor] | None = None) -> str:
    """Content identity of a user's classifier: for a TorchScript file (``cls`` None), the file's bytes
    (:func:`content_id`); for a state dict loaded into ``cls(**kwargs)``, a SHA-256 of the tensors of ``state``
    (read from ``path`` when None), the class's qualified name, the source of its module and ``kwargs``, so an
    edited class module or new weights give a new identity and a re-saved file of the same weights does not.
    """
    if cls is None:
        return content_id(path)
    if state is None:
        from mimicfast.models.loader import load_state_dict_file

        state = load_state_dict_file(path)
    digest = hashlib.sha256(f"{cls.__module__}:{cls.__qualname__}".encode())
    digest.update(json.dumps(dict(kwargs or {}), sort_keys=True, default=repr).encode())
    digest.update(_module_source(cls.__module__))
    update_with_tensors(digest, sorted(state.items()))
    return f"{cls.__qualname__}:sha256:{digest.hexdigest()[:16]}"


def _module_source(name: str) -> bytes:
    """The bytes of the file that defines module ``name`` (what an edit changes), or its name for a module
    without a source file (built into the interpreter, so fixed by the Python build)."""
    module = sys.modules[name]
    source = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
    if source is None and getattr(module, "__file__", None):
        source = module.__file__  # an extension module: its binary
    if source is None:
        return f"<module {name} without a file>".encode()
    with open_input(Path(source)) as f:
        return f.read()


def load_model(path: Path | None, config: str | None = None, device: str = "cpu") -> tuple[nn.Module, str]:
    """``(diffusion network, identity)``: any checkpoint :func:`mimicfast.load` accepts, or (None) the bundled
    Fashion-MNIST UNet. The identity is the network's content (:func:`mimicfast.models.identity.model_digest`:
    its class, the config it was built from and its tensors), whichever file and config file it came from."""
    if path is None:
        from mimicfast.default import load_default_unet

        net = load_default_unet(device)
    else:
        from mimicfast.models import load

        net = load(path, config).to(device)
    return net, f"{type(net).__name__}:sha256:{model_digest(net)[:16]}"
