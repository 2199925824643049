"""Backend discovery and dispatch of mimicfast.ops: backends(), set_backend / MIMICFAST_BACKEND, torch.compile,
CUDA graphs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mimicfast
from mimicfast.errors import InputError
from mimicfast.ops import _dispatch, bicubic_up4, bicubic_up4_adjoint, l1_residual, set_backend
from mimicfast.reference.ops import l1_residual_reference


def test_backends_reports_every_backend():
    report = mimicfast.backends()
    assert set(report) == {"triton", "cuda", "cpp", "reference"}
    assert report["reference"] == {"available": True}
    for name, entry in report.items():
        assert isinstance(entry["available"], bool), name
        if not entry["available"]:
            assert isinstance(entry["reason"], str) and entry["reason"], name
    if not torch.cuda.is_available():
        assert report["cuda"]["available"] is False


def test_cpp_backend_matches_extension():
    try:
        from mimicfast import _C  # noqa: F401
    except ImportError:
        assert mimicfast.backends()["cpp"]["available"] is False
        assert "mimicfast._C" in mimicfast.backends()["cpp"]["reason"]
    else:
        assert mimicfast.backends()["cpp"] == {"available": True}


def test_auto_prefers_compiled_on_cpu(restore_backend):
    set_backend("auto")
    expected = "cpp" if mimicfast.backends()["cpp"]["available"] else "reference"
    assert _dispatch.backend_for("cpu") == expected


def test_forcing_a_backend(restore_backend):
    set_backend("reference")
    assert _dispatch.backend_for("cpu") == "reference"
    with pytest.raises(InputError, match="'fastest' is not one of auto"):
        set_backend("fastest")
    assert _dispatch.forced_backend() == "reference"  # a rejected name changes nothing
    assert set_backend("cuda") == "reference"
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        l1_residual(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


def test_forced_reference_gives_reference(restore_backend):
    set_backend("reference")
    x0_hat, y = torch.randn(2, 3, 6, 7, dtype=torch.float64), torch.randn(2, 3, 6, 7, dtype=torch.float64)
    assert torch.equal(l1_residual(x0_hat, y), l1_residual_reference(x0_hat, y))


def test_environment_is_read_once_at_import():
    """MIMICFAST_BACKEND is read when mimicfast.ops is imported, not per call: changing it later does nothing;
    a bad value does not break the import but names itself at the first op call; set_backend overrides it."""
    script = """
import os, pytest, torch
from mimicfast.errors import InputError
from mimicfast.ops import l1_residual, set_backend
x = torch.zeros(1, 1, 2, 2)
os.environ["MIMICFAST_BACKEND"] = "reference"
with pytest.raises(InputError, match="MIMICFAST_BACKEND='fastest'"):
    l1_residual(x, x)
set_backend("reference")
assert torch.count_nonzero(l1_residual(x, x + 1)) == 4
"""
    env = {**os.environ, "MIMICFAST_BACKEND": "fastest"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_torch_compile_fullgraph():
    """The custom ops trace through their fake kernels: no graph break, same values as eager."""

    def guidance(x0_hat, y, x):
        return l1_residual(x0_hat, y, "bicubic") + bicubic_up4_adjoint(bicubic_up4(x))

    x0_hat, y, x = (torch.randn(2, 3, 5, 6) for _ in range(3))
    torch._dynamo.reset()
    compiled = torch.compile(guidance, backend="aot_eager", fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x0_hat, y, x), guidance(x0_hat, y, x), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_graph_capture(restore_backend):
    x0_hat = torch.randn(4, 3, 32, 32, device="cuda")
    y = torch.randn(4, 3, 32, 32, device="cuda")
    for backend in ("triton", "cuda"):
        if _dispatch.why_unavailable(backend, "cuda") is not None:
            continue
        set_backend(backend)
        l1_residual(x0_hat, y, "bicubic")  # warm-up: Triton compiles outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            r = l1_residual(x0_hat, y, "bicubic")
        x0_hat.copy_(torch.randn_like(x0_hat))  # new inputs in place; the replay recomputes into r
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(r, l1_residual_reference(x0_hat, y, "bicubic"), rtol=0, atol=1e-5)
