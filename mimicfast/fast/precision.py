"""Precision and layout policy of the fast path: the network in bf16/fp16, everything else in fp32.

Only the network's convolutions, matmuls and attention run in the low-precision ``autocast`` dtype. The
sampler state ``x``, the schedule and guidance coefficients, the preconditioning arithmetic of the denoiser
adapters (``x - sigma * eps``; a preconditioner's ``c_skip x + c_out F``) and the guidance residual stay in the working
dtype (fp32): they are elementwise, cheap, and where rounding would accumulate over 1000 steps.

Weights of rank >= 2 (conv kernels, linear and attention projections) are cast to the autocast dtype once
per :class:`PrecisionDenoiser`, instead of by autocast at every step (for the 552M-parameter ImageNet UNet a
per-step cast moves 3.3 GB, about 40% of a batch-1 forward on an H100); rank-1 parameters (biases,
normalisation affines) stay fp32, as autocast wants them. The caller's module is never modified: the cast
weights are substituted by :func:`torch.func.functional_call` for the duration of each call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mimicfast.errors import InputError
from mimicfast.sampling.denoisers import Denoiser

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": None,
    "float32": None,
    "none": None,
}


def resolve_autocast(autocast: torch.dtype | str | None) -> torch.dtype | None:
    """``"bf16"`` / ``torch.bfloat16`` -> bfloat16, ``"fp16"`` -> float16, ``None`` / ``"fp32"`` -> None (no autocast)."""
    if autocast is None or autocast == torch.float32:
        return None
    if isinstance(autocast, torch.dtype):
        if autocast in (torch.bfloat16, torch.float16):
            return autocast
    elif isinstance(autocast, str) and autocast.lower() in _DTYPES:
        return _DTYPES[autocast.lower()]
    raise InputError(f"autocast must be None, 'bf16', 'fp16', 'fp32' or a torch dtype of those, got {autocast!r}")


class _WithVariance(nn.Module):
    """Adapter so that ``functional_call`` (which calls ``forward``) reaches ``denoise_with_variance``."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.inner.denoise_with_variance(x, sigma)


class PrecisionDenoiser(Denoiser):
    """A :class:`Denoiser` that runs ``inner`` under an autocast / layout / compile policy.

    Args:
        inner: the denoiser to wrap (its parameters are read, never modified).
        autocast: the network's compute dtype (``torch.bfloat16`` / ``torch.float16``), or None for the
            input's dtype (no autocast).
        cast_weights: pre-cast rank >= 2 weights to ``autocast`` once (see the module docstring).
        channels_last: feed the network NHWC activations and NHWC conv kernels (Tensor Core friendly).
        compile: ``False``, ``True`` (``torch.compile`` with the default backend) or a backend name
            (e.g. ``"eager"`` to check the tracing without code generation).

    ``forward(x, sigma)`` / ``denoise_with_variance(x, sigma)`` return tensors in ``x.dtype`` (the adapters
    already cast the network output back), so the sampler's state never leaves the working dtype. The cast
    weights are made on ``inner``'s device at construction: move ``inner`` first, then wrap it.
    """

    def __init__(
        self,
        inner: Denoiser,
        *,
        autocast: torch.dtype | None = None,
        cast_weights: bool = True,
        channels_last: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.autocast = autocast
        self.channels_last = channels_last
        self.image_size = inner.image_size
        self.channels = inner.channels
        self.learned_variance = inner.learned_variance
        self.guidance_scales = inner.guidance_scales
        self._adapter = _WithVariance(inner)
        # Not registered as parameters/buffers: they are derived from inner's and must not appear twice.
        self._overrides = self._derived_weights(cast_weights)
        call: Callable = self._functional_call
        if compile:
            call = torch.compile(call, backend=compile if isinstance(compile, str) else "inductor", dynamic=False)
        self._call = call

    def _derived_weights(self, cast_weights: bool) -> dict[str, torch.Tensor]:
        """``name -> tensor`` substitutes for the adapter's parameters (cast and/or NHWC), detached."""
        out: dict[str, torch.Tensor] = {}
        for name, p in self._adapter.named_parameters():
            cast = cast_weights and self.autocast is not None and p.dim() >= 2 and p.is_floating_point()
            nhwc = self.channels_last and p.dim() == 4
            if cast or nhwc:
                t = p.detach().to(self.autocast) if cast else p.detach()
                out[name] = t.contiguous(memory_format=torch.channels_last) if nhwc else t
        return out

    def _functional_call(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self._overrides:
            return self._adapter(x, sigma)
        return torch.func.functional_call(self._adapter, self._overrides, (x, sigma), strict=False)

    def denoise_with_variance(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.autocast is None:
            return self._call(x, sigma)
        # No cast cache: a cached cast made during CUDA-graph capture would live in the graph's pool past the
        # context that owns it (torch's advice for graphed autocast); the matrices are pre-cast anyway.
        with torch.autocast(x.device.type, dtype=self.autocast, cache_enabled=False):
            return self._call(x, sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma)[0]

    def sigmas(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        """``inner``'s noise levels: the policy changes the arithmetic, never the schedule."""
        return self.inner.sigmas(steps, spacing)


def apply_policy(
    denoiser: Denoiser,
    *,
    autocast: torch.dtype | str | None = None,
    cast_weights: bool = True,
    channels_last: bool = False,
    compile: bool | str = False,
) -> Denoiser:
    """``denoiser`` itself when the policy is plain (fp32, NCHW, not compiled), else a :class:`PrecisionDenoiser`.

    Returning the same object for the plain policy keeps the fast path's arithmetic identical to the eager
    sampler's (same modules, same dtypes), which the tests check bit for bit.
    """
    dtype = resolve_autocast(autocast)
    if dtype is None and not channels_last and not compile:
        return denoiser
    return PrecisionDenoiser(
        denoiser, autocast=dtype, cast_weights=cast_weights, channels_last=channels_last, compile=compile
    )
