"""Attack libraries run unchanged against ``nn.Sequential(Purifier(model, grad=..., seed=None), classifier)``.

ART (``adversarial-robustness-toolbox``, the ``test`` extra): its PyTorch estimator and PGD return adversarial
examples through both gradient modes. The official AutoAttack is not on the package index; its APGD's calls
(a clean pass without grad, then forward of an input that requires grad and ``torch.autograd.grad`` of a loss on
the logits, averaged over EOT draws) are replayed here as written in its ``autopgd_base.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mimicfast

STEPS = 2  # reverse steps: the second is guided in the paper's window (k = 1 in [0.2 T, 0.5 T]); small for a test


@pytest.fixture(scope="module")
def bundled() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    from mimicfast.default import load_default, load_test_slice

    unet, clf = load_default()
    x, y = load_test_slice(2)
    return unet, clf, x, y


@pytest.mark.parametrize("grad", ["bpda", "full"])
def test_art_pgd_through_the_purifier(bundled, grad) -> None:
    art = pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    unet, clf, x, y = bundled
    model = nn.Sequential(mimicfast.Purifier(unet, steps=STEPS, grad=grad, seed=None), clf)
    estimator = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu",
    )  # fmt: skip
    eps = 0.1
    attack = ProjectedGradientDescent(
        estimator, norm=np.inf, eps=eps, eps_step=eps, max_iter=1, batch_size=2, num_random_init=0, verbose=False
    )
    x_adv = attack.generate(x=x.numpy(), y=y.numpy())
    assert art.__version__ and x_adv.shape == tuple(x.shape) and np.isfinite(x_adv).all()
    delta = np.abs(x_adv - x.numpy())
    assert delta.max() <= eps + 1e-6 and delta.max() > 0  # moved, and inside the ball
    grads = estimator.loss_gradient(x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()])
    assert np.isfinite(grads).all() and (np.abs(grads).reshape(2, -1).sum(1) > 0).all()


@pytest.mark.parametrize("grad", ["bpda", "full"])
def test_autoattack_apgd_call_pattern(bundled, grad) -> None:
    unet, clf, x, y = bundled
    model = nn.Sequential(mimicfast.Purifier(unet, steps=STEPS, grad=grad, seed=None), clf)
    model.eval()
    with torch.no_grad():  # AutoAttack's clean pass
        assert model(x).shape == (2, 10)
    x_adv = (x + 0.05 * torch.rand_like(x).sign()).clamp(0, 1)
    x_adv.requires_grad_()
    grad_sum = torch.zeros_like(x)
    for _ in range(2):  # eot_iter draws, fresh defense seeds on every call
        with torch.enable_grad():
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y, reduction="none").sum()
        grad_sum += torch.autograd.grad(loss, [x_adv])[0].detach()
    assert torch.isfinite(grad_sum).all() and (grad_sum.flatten(1).abs().sum(1) > 0).all()
