"""Read NVlabs/edm's released ``.pkl`` networks without executing any code from the file.

EDM writes ``pickle.dump({'ema': <EDMPrecond>, 'loss_fn': ..., 'augment_pipe': ..., ...})``. Its modules are
``torch_utils.persistence`` classes: each pickles as ``_reconstruct_persistent_obj(meta)`` with
``meta = {type: 'class', version, module_src, class_name, state}``, where ``module_src`` is the source code of the
defining module (EDM's own loader ``exec``s it) and ``state`` the module's ``__dict__`` (``_parameters``,
``_buffers``, ``_modules``, plain attributes, and the constructor arguments ``_init_args`` / ``_init_kwargs``).
Tensors pickle through ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over storages serialised as
``torch.storage._load_from_bytes(<legacy torch.save bytes>)``; ``torch.nn.ModuleDict`` containers by class and
state.

:class:`RestrictedUnpickler` first walks the stream with :func:`mimicfast.safe_read.check_pickle` (bounded
depth and size; BUILD only on objects the file creates, so a file cannot rewrite the builders below), then
resolves only an allow-list of globals, each to a function of this module that builds inert data
(``module_src`` stays an unused string; nested storage bytes are checked the same way and go through
``torch.load(weights_only=True)``); any other global raises :class:`~mimicfast.errors.CheckpointError` naming it,
before anything from it is called. :func:`persisted_init_kwargs` and :func:`persisted_tensors` then read the
constructor arguments and the tensors of a persisted network, checking every persisted submodule's class and
hyper-parameters against the module mimicfast builds (:func:`mimicfast.models.loader.load_edm_pickle`).
"""

from __future__ import annotations

import collections
import inspect
import io
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from mimicfast.errors import CheckpointError
from mimicfast.models.edm_precond import PRECOND_CLASSES
from mimicfast.safe_read import check_pickle, check_torch_legacy, one_line

__all__ = [
    "PICKLE_SUFFIXES",
    "PersistedObject",
    "RestrictedUnpickler",
    "persisted_init_kwargs",
    "persisted_tensors",
    "read_edm_pickle",
]

PICKLE_SUFFIXES = (".pkl", ".pickle")


class PersistedObject:
    """An EDM persistent object as stored: class name, persistence version and ``__dict__`` state. Never
    instantiated as the class it names; ``module_src`` is dropped unread."""

    __slots__ = ("class_name", "state", "version")

    def __init__(self, class_name: str, state: dict, version: Any) -> None:
        self.class_name = class_name
        self.state = state
        self.version = version

    def __repr__(self) -> str:
        return f"PersistedObject({self.class_name!r})"


class _PickledContainer:
    """Stand-in for a plain ``torch.nn`` container (``ModuleDict`` ...): records the state pickle BUILDs."""

    class_name = "?"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"pickled {self.class_name} has a non-dict state ({type(state).__name__})")
        self.state = state


_CONTAINERS = {
    name: type(name, (_PickledContainer,), {"class_name": name}) for name in ("ModuleDict", "ModuleList", "Sequential")
}


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict (EDM's kwargs containers)."""


def _reconstruct_persistent_obj(meta: Any) -> PersistedObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError("persistent object with unsupported meta (expected a dict with type='class')")
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise CheckpointError("persistent object without a class_name string and a state dict")
    return PersistedObject(name, state, meta.get("version"))


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 object creation), for container stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, _PickledContainer)) or base is not object or state is not None:
        raise CheckpointError(f"refusing copyreg._reconstructor for {cls!r}")
    return cls()


def _check_hooks(hooks: Any) -> None:
    if hooks:  # a non-empty hook dict would hold callables, which find_class would already have refused
        raise CheckpointError("pickled tensor carries backward hooks")


def _rebuild_tensor_v2(
    storage: Any,
    offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, not a torch storage")
    _check_hooks(backward_hooks)
    try:
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid pickled tensor (size {size}, stride {stride}, offset {offset}): {one_line(e)}") from None


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple) -> torch.Tensor:
    return _rebuild_tensor_v2(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any, state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
    _check_hooks(backward_hooks)
    if state:
        raise CheckpointError("pickled parameter carries extra Python state")
    return data


def _load_storage_from_bytes(data: Any) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise CheckpointError(f"storage payload is a {type(data).__name__}, not bytes")
    check_torch_legacy(io.BytesIO(data), "tensor storage inside the pickle")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure of the nested (weights-only) load means a bad file
        raise CheckpointError(f"unreadable tensor storage inside the pickle: {one_line(e)}") from None
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise CheckpointError(f"storage payload holds a {type(storage).__name__}, not a storage")
    return storage


_NUMPY_KINDS = "biufc"  # bool, signed/unsigned int, float, complex: no object/void/string dtypes


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise CheckpointError(f"numpy dtype from a {type(spec).__name__}")
    # A fresh dtype object (numpy's pickles ask for copy=True too): BUILD then sets its byte order on this copy,
    # never on numpy's shared builtin instance.
    dtype = np.dtype(spec, copy=True)
    if dtype.kind not in _NUMPY_KINDS:
        raise CheckpointError(f"refusing numpy dtype {spec!r} (only numeric dtypes are allowed)")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_KINDS or not isinstance(data, bytes):
        raise CheckpointError("refusing a numpy scalar that is not numeric data")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise CheckpointError(f"refusing numpy array subtype {subtype!r}")
    if shape != (0,):  # what ndarray.__reduce__ writes; a larger shape would only allocate memory
        raise CheckpointError("refusing a numpy array placeholder that is not empty")
    return np.empty((0,), dtype=np.uint8)  # BUILD (ndarray.__setstate__) then sets shape, dtype and data


def _bytearray(source: Any = b"", encoding: Any = None) -> bytearray:
    """``bytearray`` from the bytes (protocol 3+) or latin-1 text (protocol 0-2) its pickle holds; never from an
    integer, which would allocate that many zero bytes."""
    if isinstance(source, bytes) and encoding is None:
        return bytearray(source)
    if isinstance(source, str) and encoding in ("latin1", "latin-1"):
        return bytearray(source, encoding)
    raise CheckpointError(f"refusing bytearray from a {type(source).__name__}")


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise CheckpointError("refusing _codecs.encode on non-text data")
    return text.encode(encoding)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(m, "scalar"): _numpy_scalar for m in _NUMPY_MODULES},
    **{(m, "_reconstruct"): _numpy_reconstruct for m in _NUMPY_MODULES},
    **{("torch.nn.modules.container", name): cls for name, cls in _CONTAINERS.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals EDM's files need, each to an inert builder.

    Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, EDM's own classes, ...) raises
    :class:`CheckpointError` naming the global; persistent ids are refused too. :meth:`load` first walks the
    stream with :func:`~mimicfast.safe_read.check_pickle` (the stream must be seekable), so no object is
    built from a pickle that is too deep or too large or that would BUILD on an allow-listed class or function.
    """

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self._stream = file

    def load(self) -> Any:
        start = self._stream.tell()
        check_pickle(self._stream, "")
        self._stream.seek(start)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise CheckpointError(
                f"refusing to load global {module}.{name}: not on the allow-list of data types "
                "an EDM network pickle needs (mimicfast never runs code from checkpoints)"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refusing persistent id {str(pid)[:80]!r} (not an EDM network pickle)")


def read_edm_pickle(file: BinaryIO) -> Any:
    """Unpickle an EDM-format stream with :class:`RestrictedUnpickler`; persistent objects stay
    :class:`PersistedObject`. ``file`` must be seekable (it is walked once before unpickling).

    Raises CheckpointError for refused globals, bounds exceeded and truncated or corrupt data."""
    try:
        return RestrictedUnpickler(file).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- the C unpickler on hostile data: UnpicklingError, EOFError, ...
        raise CheckpointError(f"truncated or corrupt pickle: {type(e).__name__}: {one_line(e)}") from None


# Hyper-parameters whose persisted values must equal the rebuilt module's (catches a pickle whose state does
# not match its recorded constructor arguments).
_CHECKED_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "emb_channels",
    "num_groups",
    "eps",
    "num_heads",
    "skip_scale",
    "adaptive_scale",
    "up",
    "down",
    "fused_resample",
    "num_channels",
    "max_positions",
    "endpoint",
    "img_resolution",
    "img_channels",
    "label_dim",
    "sigma_data",
    "M",
    "beta_d",
    "beta_min",
    "epsilon_t",
    "C_1",
    "C_2",
)
_SCALARS = (bool, int, float, str, type(None))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, mappings -> dicts, tuples -> lists (JSON-friendly kwargs); any other
    object (a tensor, an array) is returned as is for the config validator to name."""
    if isinstance(value, np.generic) and value.dtype.kind in _NUMPY_KINDS:
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def persisted_init_kwargs(obj: PersistedObject) -> dict[str, Any]:
    """The constructor kwargs a persisted preconditioner recorded (positional ones mapped onto the names of
    mimicfast's class), as plain values; ``obj.class_name`` must be in ``PRECOND_CLASSES``."""
    args, kwargs = obj.state.get("_init_args", ()), obj.state.get("_init_kwargs")
    if not isinstance(kwargs, Mapping) or not isinstance(args, tuple | list):
        raise CheckpointError(
            f"pickled {obj.class_name} does not record its constructor arguments (_init_args/_init_kwargs)"
        )
    kwargs = _plain(kwargs)
    if any(not isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"pickled {obj.class_name} has constructor keyword arguments that are not strings")
    if args:  # map positional arguments onto the reference signature's names
        names = [p for p in inspect.signature(PRECOND_CLASSES[obj.class_name]).parameters if p != "model_kwargs"][
            : len(args)
        ]
        if len(names) < len(args):
            raise CheckpointError(f"pickled {obj.class_name} has {len(args)} positional arguments; too many")
        kwargs = dict(zip(names, _plain(list(args)), strict=True)) | kwargs
    return kwargs


def _mapping(state: dict, group: str, where: str) -> Mapping:
    value = state.get(group) or {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{where}: {group} is a {type(value).__name__}, not a dict")
    bad = next((k for k in value if not isinstance(k, str)), None)
    if bad is not None:
        raise CheckpointError(f"{where}: {group} has a key of type {type(bad).__name__}, not str")
    return value


def _walk(node: Any, module: nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (state-dict key, tensor) of a persisted module tree, checking it against ``module`` as we go."""
    where = prefix.rstrip(".") or "network"
    if not (isinstance(node, PersistedObject) or (isinstance(node, _PickledContainer) and hasattr(node, "state"))):
        raise CheckpointError(f"{where}: pickled submodule is a {type(node).__name__}")
    name = node.class_name
    if name != type(module).__name__:
        raise CheckpointError(f"{where}: pickled class {name} where mimicfast builds {type(module).__name__}")
    state = node.state
    for attr in _CHECKED_ATTRS:
        if attr not in state or not hasattr(module, attr):
            continue
        value = _plain(state[attr])
        if not isinstance(value, _SCALARS):
            raise CheckpointError(f"{where}: pickled {attr} is a {type(value).__name__}, not a number")
        if value != getattr(module, attr):
            raise CheckpointError(
                f"{where}: pickled {attr}={value!r} but the constructor arguments give {getattr(module, attr)!r}"
            )
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(non_persistent, set | frozenset):
        raise CheckpointError(f"{where}: _non_persistent_buffers_set is a {type(non_persistent).__name__}")
    for group in ("_parameters", "_buffers"):
        for key, value in _mapping(state, group, where).items():
            if value is None or (group == "_buffers" and key in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{where}: {group[1:-1]} {key!r} is a {type(value).__name__}")
            yield prefix + key, value
    ours = dict(module.named_children())
    for key, child in _mapping(state, "_modules", where).items():
        if child is None:
            continue
        if key not in ours:
            raise CheckpointError(
                f"{where}: pickled submodule {key!r} does not exist in mimicfast's {type(module).__name__}"
            )
        yield from _walk(child, ours[key], f"{prefix}{key}.")


def persisted_tensors(obj: PersistedObject, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a persisted network keyed like ``module.state_dict()``; every persisted submodule's class
    and checked hyper-parameters must equal ``module``'s (built from :func:`persisted_init_kwargs`)."""
    return dict(_walk(obj, module, ""))
