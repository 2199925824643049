"""The one dispatch layer of the guidance ops (docs/DESIGN.md §3).

Four backends implement every op: ``triton`` (``mimicfast.kernels``), ``cuda`` and ``cpp`` (the compiled
extension ``mimicfast._C``) and ``reference`` (``mimicfast.reference.ops``, always available). Each op registers
one CPU kernel and one CUDA kernel with ``torch.library`` (:func:`register`); each of them runs the backend
chosen for its device type, once, on its first call: by default ``triton``, then ``cuda``, for CUDA tensors and
``cpp`` for CPU tensors, ``reference`` last. ``MIMICFAST_BACKEND=auto|triton|cuda|cpp|reference`` (read once,
when this module is imported) or :func:`set_backend` forces one. The choice is looked up when a kernel runs,
so it also holds inside ``torch.compile``d code, where the ops are opaque, and in CUDA graphs captured after it.
Inputs are validated once, by the public op (:func:`check_tensor`); the backends trust them. Probing never
initialises CUDA; only :func:`backends`, a forced ``triton`` or the first CUDA call imports Triton.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import torch

from mimicfast.errors import InputError
from mimicfast.kernels.tensors import empty_like_layout

BACKENDS = ("triton", "cuda", "cpp", "reference")
ENV = "MIMICFAST_BACKEND"
DEVICE_TYPES = ("cpu", "cuda")
# Preference order of the automatic choice per device type. On CUDA, Triton comes first until the CUDA C++
# kernels are measured faster on a GPU (benches/README.md).
_AUTO = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Kernel = Callable[..., torch.Tensor]


@functools.cache
def _extension() -> tuple[ModuleType | None, str | None]:
    try:
        from mimicfast import _C
    except ImportError as exc:
        return None, f"compiled extension mimicfast._C is not importable ({exc})"
    return _C, None


def extension() -> ModuleType:
    """The compiled extension ``mimicfast._C`` (call only once ``cpp`` or ``cuda`` was chosen)."""
    ext, reason = _extension()
    if ext is None:
        raise RuntimeError(reason)
    return ext


@functools.cache
def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    try:
        import mimicfast.kernels.bicubic_up4  # noqa: F401
        import mimicfast.kernels.l1_residual  # noqa: F401
    except (ImportError, AttributeError) as exc:
        return f"Triton kernels in mimicfast.kernels are not importable ({exc})"
    return None


def why_unavailable(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run tensors of ``device_type``, or None if it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        reason = _triton_missing()
        if reason is None and device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            reason = f"Triton kernels need CUDA tensors, got {device_type} (TRITON_INTERPRET=1 runs them on the CPU)"
        return reason
    ext, reason = _extension()
    if backend == "cpp":
        return reason if reason else (None if device_type == "cpu" else "the C++ kernels run on the CPU only")
    if reason:
        return reason
    if not ext.with_cuda:
        return "mimicfast._C was built without CUDA kernels (nvcc not found or MIMICFAST_BUILD_CUDA=0)"
    if torch.version.cuda is None:
        return "torch has no CUDA (CPU-only build)"
    if device_type != "cuda":
        return f"the CUDA kernels need CUDA tensors, got {device_type}"
    return None


def backends() -> dict[str, dict[str, Any]]:
    """What loaded and, for what did not, why.

    Returns:
        ``{name: {"available": bool, "reason": str (only when unavailable)}}`` for ``triton``, ``cuda``,
        ``cpp`` and ``reference``; availability is judged for the device the backend targets (CUDA for
        ``triton`` and ``cuda``, unless ``TRITON_INTERPRET=1``; the CPU for ``cpp``).
    """
    has_cuda = torch.cuda.is_available()  # does not initialise CUDA
    device_of = {
        "triton": "cuda" if has_cuda or os.environ.get("TRITON_INTERPRET") != "1" else "cpu",
        "cuda": "cuda",
        "cpp": "cpu",
        "reference": "cpu",
    }
    report: dict[str, dict[str, Any]] = {}
    for name in BACKENDS:
        reason = why_unavailable(name, device_of[name])
        if reason is None and device_of[name] == "cuda" and not has_cuda:
            reason = "no CUDA device"
        report[name] = {"available": True} if reason is None else {"available": False, "reason": reason}
    return report


def _normalise(name: str | None) -> str:
    return (name or "auto").strip().lower() or "auto"


_forced = _normalise(os.environ.get(ENV))  # the only read of MIMICFAST_BACKEND; checked on first use
_chosen: dict[str, str] = {}  # device type -> backend, filled by backend_for


def set_backend(name: str | None = None) -> str:
    """Force one backend for every op on every device (``"auto"`` or None: the automatic choice).

    Overrides ``MIMICFAST_BACKEND``. Takes effect at the next op call, also inside ``torch.compile``d code;
    CUDA graphs captured before keep the kernels they captured.

    Args:
        name: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpp"``, ``"reference"`` or None.

    Returns:
        The previous setting (pass it back to restore it).

    Raises:
        InputError: ``name`` is not a backend.
    """
    global _forced
    name = _normalise(name)
    if name != "auto" and name not in BACKENDS:
        raise InputError(f"backend {name!r} is not one of auto, {', '.join(BACKENDS)}")
    previous, _forced = _forced, name
    _chosen.clear()
    return previous


def forced_backend() -> str:
    """The current setting: ``"auto"`` or the forced backend's name (as :func:`set_backend` takes it)."""
    return _forced


def backend_for(device_type: str) -> str:
    """The backend that runs the ops on tensors of ``device_type`` (chosen on the first call, then cached).

    Raises:
        InputError: ``MIMICFAST_BACKEND`` names no backend.
        RuntimeError: the forced backend cannot run on ``device_type``.
    """
    chosen = _chosen.get(device_type)
    if chosen is not None:
        return chosen
    if _forced == "auto":
        chosen = next((n for n in _AUTO.get(device_type, ()) if why_unavailable(n, device_type) is None), "reference")
    elif _forced not in BACKENDS:
        raise InputError(f"{ENV}={_forced!r} is not one of auto, {', '.join(BACKENDS)}")
    else:
        reason = why_unavailable(_forced, device_type)
        if reason is not None:
            raise RuntimeError(f"backend {_forced} cannot run on {device_type} tensors: {reason}")
        chosen = _forced
    _chosen[device_type] = chosen
    return chosen


def register(op: Any, kernels: Mapping[str, Kernel]) -> None:
    """Register ``op``'s CPU and CUDA kernels: each calls ``kernels[backend_for(its device type)]``.

    Args:
        op: a ``torch.library.custom_op``.
        kernels: one function per backend name, with the op's signature; inputs are already validated.
    """
    for device_type in DEVICE_TYPES:
        op.register_kernel(device_type, _routed(device_type, kernels))


def _routed(device_type: str, kernels: Mapping[str, Kernel]) -> Kernel:
    def kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
        return kernels[backend_for(device_type)](*args, **kwargs)

    return kernel


def to_layout(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` with exactly the strides of ``empty_like_layout`` (what the fake kernels promise)."""
    expected = empty_like_layout(out.shape, like, out.dtype)
    if out.stride() == expected.stride():
        return out
    return expected.copy_(out)


def cuda_launch(t: torch.Tensor) -> tuple[contextlib.AbstractContextManager, int]:
    """(device guard, cudaStream_t as int) for a launch of the compiled CUDA kernels on ``t``'s device."""
    return torch.cuda.device(t.device), torch.cuda.current_stream(t.device).cuda_stream


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Re-enable autograd dispatch inside a custom op's kernel, for the reference backend.

    torch.library runs op kernels below the Autograd dispatch keys, but the reference computes H^T by
    autograd through F.interpolate (it is the spec and stays unfused), so those keys are un-excluded here.
    """
    keys = (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.ADInplaceOrView)
    with contextlib.ExitStack() as stack:
        for key in keys:
            stack.enter_context(torch._C._SetExcludeDispatchKeyGuard(key, False))
        yield


def check_tensor(name: str, t: Any, ndim: int = 4) -> None:
    """Raise :class:`InputError` unless ``t`` is an ``ndim``-D fp16 / bf16 / fp32 / fp64 tensor."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise InputError(f"{name} must be {ndim}-D [B, C, H, W], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name} must be float16 / bfloat16 / float32 / float64, got {t.dtype}")
