"""Gradient modes of purify / Purifier: bitwise forwards, BPDA = the classifier's gradient at P(x), the full
gradient against finite differences, its correlation with BPDA on the bundled model, and its memory in T."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mimicfast
from mimicfast.autograd_memory import SavedTensorPeak
from mimicfast.errors import InputError
from tests.helpers import TinyEpsNet

KW = dict(preset="paper", steps=10, scale=1e-3)


@pytest.fixture(scope="module")
def net() -> TinyEpsNet:
    return TinyEpsNet(learn_sigma=True)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))


@pytest.mark.parametrize("preset", ["paper", "released"])
@pytest.mark.parametrize("grad", ["bpda", "full"])
def test_forward_of_every_mode_is_the_plain_output(net, x, preset, grad) -> None:
    kw = dict(KW, preset=preset) if preset == "paper" else dict(preset=preset, steps=10)
    plain = mimicfast.purify(x, net, seed=4, **kw)
    out = mimicfast.purify(x.clone().requires_grad_(True), net, seed=4, grad=grad, **kw)
    assert out.requires_grad
    assert torch.equal(out.detach(), plain)
    module = mimicfast.Purifier(net, seed=4, grad=grad, **kw)
    assert torch.equal(module(x.clone().requires_grad_(True)).detach(), plain)
    assert torch.equal(module(x), plain)  # no gradient needed: the plain path


def test_bpda_gradient_is_the_classifiers_gradient_at_the_purified_image(net, x) -> None:
    clf, labels = _classifier(), torch.tensor([0, 3, 1])
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(nn.Sequential(mimicfast.Purifier(net, seed=2, grad="bpda", **KW), clf)(xr), labels)
    (g_attack,) = torch.autograd.grad(loss, xr)
    u = mimicfast.purify(x, net, seed=2, **KW).requires_grad_(True)
    (g_clf,) = torch.autograd.grad(F.cross_entropy(clf(u), labels), u)
    assert torch.equal(g_attack, g_clf)


@pytest.mark.parametrize("jacobian", ["vjp", "constant_eps"])
@pytest.mark.parametrize("upsample", ["bicubic", "nearest"])
def test_full_gradient_equals_finite_differences_where_the_loss_is_smooth(net, jacobian, upsample) -> None:
    """With the squared-L2 guidance (Table 5 ablation) the output is smooth in x, so the recomputed reverse sweep
    (network, guidance VJP with its second-order term, learned variance, residual) must equal the derivative."""
    model = copy.deepcopy(net).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    w, v = torch.randn_like(x), torch.randn_like(x)
    kw = dict(KW, distance="l2", jacobian=jacobian, upsample=upsample)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((mimicfast.purify(xr, model, seed=5, grad="full", **kw) * w).sum(), xr)

    def f(z: torch.Tensor) -> float:
        return float((mimicfast.purify(z, model, seed=5, **kw) * w).sum())

    h = 1e-6
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert fd != 0
    assert float((g * v).sum()) == pytest.approx(fd, rel=1e-5)


def test_full_gradient_memory_does_not_grow_with_steps() -> None:
    """Autograd holds at most one recomputed step's graph at a time: the peak is the same for T = 4 and T = 24,
    while a plain backward through a chain holds every link (the probe's control)."""
    model = TinyEpsNet(learn_sigma=True, image_size=16)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    peaks = []
    for steps in (4, 24):
        xr = x.clone().requires_grad_(True)
        with SavedTensorPeak(exclude=model.parameters()) as probe:
            mimicfast.purify(xr, model, steps=steps, seed=1, grad="full", scale=1e-3).sum().backward()
        assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
        peaks.append(probe.peak)
    assert peaks[0] > 0 and peaks[1] == peaks[0]
    chain = []
    for links in (4, 24):
        with SavedTensorPeak() as probe:
            z = x.clone().requires_grad_(True)
            out = z
            for _ in range(links):
                out = out.sin()
            out.sum().backward()
        chain.append(probe.peak)
    assert chain[1] > 5 * chain[0]


def test_full_gradient_on_the_bundled_model_is_finite_nonzero_and_agrees_with_bpda() -> None:
    from mimicfast.default import load_default, load_test_slice

    unet, clf = load_default()
    x, labels = load_test_slice(3)
    grads = {}
    for grad in ("bpda", "full"):
        xr = x.clone().requires_grad_(True)
        out = mimicfast.purify(xr, unet, steps=10, seed=0, grad=grad)
        (grads[grad],) = torch.autograd.grad(F.cross_entropy(clf(out), labels, reduction="sum"), xr)
    full, bpda = grads["full"].flatten(1), grads["bpda"].flatten(1)
    assert torch.isfinite(full).all()
    assert (full.norm(dim=1) > 0).all()
    assert float(F.cosine_similarity(full, bpda).mean()) > 0


def test_grad_none_refuses_an_input_that_requires_grad(net, x) -> None:
    xr = x.clone().requires_grad_(True)
    with pytest.raises(InputError, match=r"grad='bpda'.*grad='full'"):
        mimicfast.purify(xr, net, **KW)
    with pytest.raises(InputError, match="grad='bpda'"):
        nn.Sequential(mimicfast.Purifier(net, **KW), _classifier())(xr)
    with torch.no_grad():  # no graph is built: nothing to refuse
        mimicfast.purify(xr, net, **KW)


@pytest.mark.parametrize(
    ("kw", "match"), [(dict(grad="exact"), "grad must be one of"), (dict(grad="full", tau=0.0), "tau"),
                      (dict(grad="full", tau=float("nan")), "tau")],
)  # fmt: skip
def test_bad_grad_settings(net, kw, match) -> None:
    with pytest.raises(InputError, match=match):
        mimicfast.Purifier(net, **kw)


def test_full_gradient_backward_runs_once_per_forward(net, x) -> None:
    xr = x.clone().requires_grad_(True)
    out = mimicfast.purify(xr, net, seed=1, grad="full", **KW)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        out.sum().backward()


@pytest.mark.parametrize("grad", ["bpda", "full"])
def test_gradient_does_not_depend_on_batch_size(net, grad) -> None:
    model = copy.deepcopy(net).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.randn_like(x)
    grads = []
    for batch_size in (None, 2):
        xr = x.clone().requires_grad_(True)
        out = mimicfast.purify(xr, model, seed=[4, 5, 6], grad=grad, batch_size=batch_size, **KW)
        (g,) = torch.autograd.grad((out * w).sum(), xr)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
