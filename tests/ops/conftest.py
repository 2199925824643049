"""Backend parametrization of the op tests: every backend that can run here, on the device it targets.

``triton`` runs on the CPU through the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) when there
is no GPU; ``cuda`` is marked ``gpu``. The fixture forces the backend with MIMICFAST_BACKEND, so the tests go
through the public ops and their dispatch exactly as users do.
"""

from __future__ import annotations

import pytest
import torch

from mimicfast.ops import _dispatch


@pytest.fixture(params=["reference", "cpp", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request, monkeypatch) -> tuple[str, torch.device]:
    """(backend name, device its tensors live on), with MIMICFAST_BACKEND set for the test."""
    name = request.param
    on_gpu = name == "cuda" or (name == "triton" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    reason = _dispatch.why_unavailable(name, device.type)
    if reason is not None:
        pytest.skip(f"backend {name}: {reason}")
    monkeypatch.setenv(_dispatch.ENV, name)
    return name, device
