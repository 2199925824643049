"""Backend discovery and dispatch of mimicfast.ops: backends(), MIMICFAST_BACKEND, torch.compile, CUDA graphs."""

from __future__ import annotations

import pytest
import torch

import mimicfast
from mimicfast.errors import InputError
from mimicfast.ops import _dispatch, bicubic_up4, bicubic_up4_adjoint, l1_residual
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


def test_auto_prefers_compiled_on_cpu(monkeypatch):
    monkeypatch.delenv(_dispatch.ENV, raising=False)
    expected = "cpp" if mimicfast.backends()["cpp"]["available"] else "reference"
    assert _dispatch.select(torch.device("cpu")) == expected


def test_forcing_a_backend(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV, "reference")
    assert _dispatch.select(torch.device("cpu")) == "reference"
    monkeypatch.setenv(_dispatch.ENV, "fastest")
    with pytest.raises(InputError, match="MIMICFAST_BACKEND"):
        _dispatch.select(torch.device("cpu"))
    monkeypatch.setenv(_dispatch.ENV, "cuda")
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        l1_residual(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


def test_forced_reference_gives_reference(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV, "reference")
    x0_hat, y = torch.randn(2, 3, 6, 7, dtype=torch.float64), torch.randn(2, 3, 6, 7, dtype=torch.float64)
    assert torch.equal(l1_residual(x0_hat, y), l1_residual_reference(x0_hat, y))


def test_torch_compile_fullgraph():
    """The custom ops trace through their fake kernels: no graph break, same values as eager."""

    def guidance(x0_hat, y, x):
        return l1_residual(x0_hat, y, "bicubic") + bicubic_up4_adjoint(bicubic_up4(x))

    x0_hat, y, x = (torch.randn(2, 3, 5, 6) for _ in range(3))
    torch._dynamo.reset()
    compiled = torch.compile(guidance, backend="aot_eager", fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x0_hat, y, x), guidance(x0_hat, y, x), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_graph_capture():
    x0_hat = torch.randn(4, 3, 32, 32, device="cuda")
    y = torch.randn(4, 3, 32, 32, device="cuda")
    for backend in ("triton", "cuda"):
        if _dispatch.why_unavailable(backend, "cuda") is not None:
            continue
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(_dispatch.ENV, backend)
            l1_residual(x0_hat, y, "bicubic")  # warm-up: Triton compiles outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                r = l1_residual(x0_hat, y, "bicubic")
            x0_hat.copy_(torch.randn_like(x0_hat))  # new inputs in place; the replay recomputes into r
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(r, l1_residual_reference(x0_hat, y, "bicubic"), rtol=0, atol=1e-5)
