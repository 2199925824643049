"""The spec: plain-PyTorch, float64-capable, unfused implementations.

Every fast path in mimicfast is tested against what lives here, never the other way round.
"""

from mimicfast.reference.ops import (
    bicubic_up4_adjoint_reference,
    bicubic_up4_reference,
    l1_residual_reference,
    upsample_reference,
)

__all__ = [
    "bicubic_up4_adjoint_reference",
    "bicubic_up4_reference",
    "l1_residual_reference",
    "upsample_reference",
]
