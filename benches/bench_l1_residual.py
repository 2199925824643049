"""Benches of the fused guidance residual ``mimicfast.ops.l1_residual`` (bicubic H, the paper's; fp32 inputs).

Floor counts per element of x0_hat (docs/DESIGN.md §5): bytes = x0_hat + y read + r written (4 + 4 + 4). FP32
FLOPs of the fused formulation with every stencil separable and nothing recomputed: d = x0_hat - y (1);
H d: horizontal 4 taps on H x 4W values then vertical 4 taps on 4H x 4W values = 16 + 64 multiply-adds (160);
H^T of the signs: x-adjoint 16 taps on 4H x W values then y-adjoint 16 taps on H x W = 64 + 16 (160);
long * s + short * adj and the weight (4). Sign evaluations are not counted.
"""

from __future__ import annotations

import pytest
import torch

from benches.conftest import DEVICE, cases, skip_reason
from mimicfast import ops
from mimicfast.reference.ops import l1_residual_reference

OP = "l1_residual"
BYTES_PER_ELEMENT = 4 + 4 + 4
FLOPS_PER_ELEMENT = 1 + 160 + 160 + 4


def _reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return l1_residual_reference(x, y, "bicubic")


@pytest.mark.parametrize("shape, provider", cases())
def test_l1_residual(run_bench, request, shape, provider):
    reason = skip_reason(OP, shape, provider)
    if reason is not None:
        pytest.skip(reason)

    def make(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        return (torch.randn(shape, generator=gen, device=DEVICE), torch.randn(shape, generator=gen, device=DEVICE))

    if provider == "reference":
        call = _reference
    elif provider == "compile":
        call = torch.compile(l1_residual_reference, dynamic=False)
    else:
        previous = ops.set_backend(provider)
        request.addfinalizer(lambda: ops.set_backend(previous))

        def call(x, y):
            return ops.l1_residual(x, y, "bicubic")

    numel = shape[0] * shape[1] * shape[2] * shape[3]
    run_bench(OP, shape, provider, call, make, BYTES_PER_ELEMENT * numel, FLOPS_PER_ELEMENT * numel, _reference)
