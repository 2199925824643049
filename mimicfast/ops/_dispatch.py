"""Backend discovery and selection for the guidance ops (DESIGN.md §3).

Four backends implement every op: ``triton`` (``mimicfast.kernels``), ``cuda`` and ``cpp`` (the compiled
extension ``mimicfast._C``) and ``reference`` (``mimicfast.reference.ops``, always available). By default a
CUDA tensor runs on ``triton``, then ``cuda``; a CPU tensor on ``cpp``; ``reference`` is the last fallback.
``MIMICFAST_BACKEND=auto|triton|cuda|cpp|reference`` forces one (read at every call, so it also applies
inside ``torch.compile``d code, where the ops are opaque). Probing never initialises CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

from mimicfast.errors import InputError
from mimicfast.reference.ops import compute_dtype  # noqa: F401 -- re-exported for the launchers

BACKENDS = ("triton", "cuda", "cpp", "reference")
ENV = "MIMICFAST_BACKEND"
# Preference order of MIMICFAST_BACKEND=auto per device type. On CUDA, Triton comes first until the CUDA
# C++ kernels are measured faster on a GPU (benches/README.md).
_AUTO = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@functools.cache
def _extension() -> tuple[ModuleType | None, str | None]:
    try:
        from mimicfast import _C
    except ImportError as exc:
        return None, f"compiled extension mimicfast._C is not importable ({exc})"
    return _C, None


def extension() -> ModuleType:
    """The compiled extension ``mimicfast._C`` (call only after :func:`select` chose ``cpp`` or ``cuda``)."""
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


def select(device: torch.device) -> str:
    """The backend that runs an op on ``device``: ``MIMICFAST_BACKEND`` if set, else the first usable one."""
    forced = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if forced == "auto":
        for name in _AUTO.get(device.type, ("reference",)):
            if why_unavailable(name, device.type) is None:
                return name
        return "reference"
    if forced not in BACKENDS:
        raise InputError(f"{ENV}={forced!r} is not one of auto, {', '.join(BACKENDS)}")
    reason = why_unavailable(forced, device.type)
    if reason is not None:
        raise RuntimeError(f"{ENV}={forced} cannot run on {device.type} tensors: {reason}")
    return forced


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """Layout of an op's output: channels_last when ``t`` is laid out that way (and not also contiguous)."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(shape: tuple[int, ...] | torch.Size, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised output of ``shape`` and ``dtype`` on ``like``'s device in ``like``'s layout."""
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format(like))


def to_layout(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` with exactly the strides of :func:`empty_like_layout` (what the fake kernels promise)."""
    expected = empty_like_layout(out.shape, like, out.dtype)
    if out.stride() == expected.stride():
        return out
    return expected.copy_(out)


def launch_context(t: torch.Tensor) -> tuple[contextlib.AbstractContextManager, int]:
    """(device guard, cudaStream_t as int) for a compiled-kernel launch on ``t``'s device; (null, 0) on CPU."""
    if not t.is_cuda:
        return contextlib.nullcontext(), 0
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
