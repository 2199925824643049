"""Backend parametrization of the op tests: every backend that can run here, on the device it targets.

``triton`` runs on the CPU through the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) when there
is no GPU; ``cuda`` is marked ``gpu``. The fixture forces the backend with ``mimicfast.ops.set_backend``, so
the tests go through the public ops and their dispatch exactly as users do.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mimicfast.ops import _dispatch, set_backend


@pytest.fixture
def restore_backend() -> Iterator[None]:
    """Give the test a free hand with ``set_backend``: the setting before it is restored after it."""
    previous = _dispatch.forced_backend()
    yield
    set_backend(previous)


@pytest.fixture(params=["reference", "cpp", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request, restore_backend) -> tuple[str, torch.device]:
    """(backend name, device its tensors live on), with that backend forced for the test."""
    name = request.param
    on_gpu = name == "cuda" or (name == "triton" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    reason = _dispatch.why_unavailable(name, device.type)
    if reason is not None:
        pytest.skip(f"backend {name}: {reason}")
    set_backend(name)
    return name, device


@pytest.fixture
def full_backend(backend) -> tuple[str, torch.device]:
    """``backend`` for the whole test matrix: the Triton interpreter (seconds per call on the CPU) takes only
    the core cases; the Triton kernels' own numerics are covered by tests/ops/test_*_triton.py."""
    name, device = backend
    if name == "triton" and device.type == "cpu":
        pytest.skip("Triton interpreter: core cases only (this one runs on a GPU)")
    return backend


@pytest.fixture
def shapes_for(backend):
    """shapes_for(shapes): the test shapes, or one small odd-sized one under the (slow) Triton interpreter."""
    name, device = backend
    interpreted = name == "triton" and device.type == "cpu"
    return lambda shapes: [(2, 1, 5, 7)] if interpreted else shapes
