"""Fast guidance ops with interchangeable backends (docs/DESIGN.md §3).

    l1_residual(x0_hat, y, upsample, weight)   r = w (sign(d) + H^T sign(H d)), fused, d = x0_hat - y
    bicubic_up4(x), bicubic_up4_adjoint(g)      H and H^T (each the other's backward)
    backends()                                  which of triton / cuda / cpp / reference loaded, and why not
    set_backend(name)                           force one backend ("auto": the automatic choice)

Each op is a ``torch.library`` custom op (``mimicfast::<name>``) with one CPU and one CUDA kernel: CUDA runs
Triton, else the CUDA C++ kernels; the CPU runs the C++ (OpenMP) kernels; the plain-PyTorch reference is the
last fallback. ``MIMICFAST_BACKEND`` (read once, at import) or :func:`set_backend` forces one backend.
Importing this package neither initialises CUDA nor imports Triton.
"""

from mimicfast.ops._dispatch import backends, set_backend
from mimicfast.ops.bicubic_up4 import bicubic_up4, bicubic_up4_adjoint
from mimicfast.ops.l1_residual import l1_residual

__all__ = ["backends", "bicubic_up4", "bicubic_up4_adjoint", "l1_residual", "set_backend"]
