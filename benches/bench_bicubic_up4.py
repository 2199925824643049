"""Benches of H and H^T: ``mimicfast.ops.bicubic_up4`` and ``bicubic_up4_adjoint`` (fp32).

Floor counts per low-res element (shape = the low-res [B, C, H, W]): bytes = 4 (low-res) + 16 * 4
(high-res), read for one and written for the other. FP32 FLOPs, separable and nothing recomputed: H is
4 taps horizontally on H x 4W values plus 4 taps vertically on 4H x 4W values = 16 + 64 multiply-adds
(160); H^T is 16 taps on 4H x W values plus 16 taps on H x W = 64 + 16 multiply-adds (160).
"""

from __future__ import annotations

import pytest
import torch

from benches.conftest import DEVICE, cases, skip_reason
from mimicfast import ops
from mimicfast.reference.ops import bicubic_up4_adjoint_reference, bicubic_up4_reference

BYTES_PER_ELEMENT = 4 + 16 * 4
FLOPS_PER_ELEMENT = 160
OPS = {
    "bicubic_up4": (bicubic_up4_reference, ops.bicubic_up4, 1),
    "bicubic_up4_adjoint": (bicubic_up4_adjoint_reference, ops.bicubic_up4_adjoint, 4),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape, provider", cases())
def test_bicubic_up4(run_bench, request, op, shape, provider):
    reason = skip_reason(op, shape, provider)
    if reason is not None:
        pytest.skip(reason)
    reference, fast, scale = OPS[op]
    b, c, h, w = shape

    def make(seed: int) -> tuple[torch.Tensor]:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        return (torch.randn((b, c, h * scale, w * scale), generator=gen, device=DEVICE),)

    if provider == "reference":
        call = reference
    elif provider == "compile":
        call = torch.compile(reference, dynamic=False)
    else:
        previous = ops.set_backend(provider)
        request.addfinalizer(lambda: ops.set_backend(previous))
        call = fast
    numel = b * c * h * w
    run_bench(op, shape, provider, call, make, BYTES_PER_ELEMENT * numel, FLOPS_PER_ELEMENT * numel, reference)
