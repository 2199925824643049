"""End to end: purify with an EDM CIFAR-10-layout network (random weights), from Python and from an EDM .pkl."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mimicfast
from mimicfast.cli import main
from tests.models._edm_util import edm_pickle_bytes, tiny_edm

# The CIFAR-10 DDPM++ layout (channel_mult [2,2,2], attention at 16x16, augment_dim 9) at 32x32, narrow and
# with one block per level so that T = 100 runs in CI time.
CIFAR_SMALL = dict(img_resolution=32, channel_mult=[2, 2, 2], attn_resolutions=[16], model_channels=8, num_blocks=1)


@pytest.fixture(scope="module")
def net():
    return tiny_edm(seed=11, **CIFAR_SMALL).requires_grad_(False)


def _images(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_paper_preset_t100(net):
    x = _images(2)
    out = mimicfast.purify(x, net, preset="paper", steps=100, seed=[3, 4])
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not any(p.grad is not None for p in net.parameters())


def test_batch_independence_float64(net):
    """Image 1 purified alone equals image 1 purified in a batch (float64: random-weight trajectories are
    chaotic, so float32 rounding differences between batch sizes would grow over the steps)."""
    net64 = copy.deepcopy(net).double()
    x = _images(2).double()
    out = mimicfast.purify(x, net64, preset="paper", steps=10, seed=[3, 4])
    alone = mimicfast.purify(x[1:], net64, preset="paper", steps=10, seed=[4])
    assert out.dtype == torch.float64
    torch.testing.assert_close(alone, out[1:], rtol=0, atol=1e-10)


def test_released_preset_short(net):
    x = _images(1)
    a = mimicfast.purify(x, net, preset="released", steps=10, seed=0)
    b = mimicfast.purify(x, net, preset="released", steps=10, seed=0)
    assert torch.equal(a, b) and a.shape == x.shape


def test_cli_purify_with_edm_pkl(tmp_path, net):
    ckpt = tmp_path / "edm-cifar10-tiny.pkl"
    ckpt.write_bytes(edm_pickle_bytes(net))
    batch = tmp_path / "batch.npy"
    np.save(batch, _images(2).numpy())
    out = tmp_path / "out"
    argv = ["purify", str(batch), "-o", str(out), "--checkpoint", str(ckpt), "--preset", "paper", "--steps", "8"]
    assert main(argv) == 0
    result = torch.load(out / "purified.pt", weights_only=True)
    assert result["images"].shape == (2, 3, 32, 32)
    expected = mimicfast.purify(_images(2), mimicfast.load(ckpt), preset="paper", steps=8, seed=[0, 1])
    torch.testing.assert_close(result["images"], expected, rtol=0, atol=1e-6)
