"""The bundled Fashion-MNIST models and test slice load from the package and do their jobs."""

from __future__ import annotations

import pytest
import torch

import mimicfast
from mimicfast.default import fmnist_unet_config, load_default, load_test_slice
from mimicfast.errors import InputError
from mimicfast.evaluate import accuracy
from mimicfast.schedules import alphas_cumprod, linear_betas


@pytest.fixture(scope="module")
def models():
    return load_default()


def test_test_slice():
    x, y = load_test_slice()
    assert x.shape == (1000, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert x[:, :, :2].abs().sum() == 0  # 2-pixel zero padding of the 28x28 originals
    assert sorted(y.unique().tolist()) == list(range(10))
    assert load_test_slice(3)[0].shape == (3, 1, 32, 32)
    with pytest.raises(InputError, match="n must be"):
        load_test_slice(0)


def test_classifier_beats_90_percent_on_the_shipped_slice(models):
    _, classifier = models
    x, y = load_test_slice()
    assert not any(p.requires_grad for p in classifier.parameters())
    assert accuracy(classifier, x, y) > 0.90


def test_unet_declares_the_guidance_scales_tuned_for_it(models):
    unet, _ = models
    assert unet.guidance_scales == {"paper": 0.01, "released": 1000.0}  # docs/MODEL_CARD.md, "Guidance scale"
    assert mimicfast.Purifier(unet, preset="released").preset.scale == 1000.0
    assert mimicfast.Purifier(unet, preset=mimicfast.presets.RELEASED).preset.scale == 3000.0
    assert "guidance_scale" not in fmnist_unet_config()  # never reaches the network's constructor


def test_unet_is_a_trained_eps_predictor(models):
    unet, _ = models
    assert mimicfast.load_default is load_default
    assert unet.denoiser_kind == "eps_timestep" and unet.in_channels == 1 and unet.out_channels == 1
    assert fmnist_unet_config()["image_size"] == 32
    x0 = load_test_slice(32)[0] * 2 - 1
    gen = torch.Generator().manual_seed(0)
    abar = alphas_cumprod(linear_betas()).float()
    # Measured MSEs of the network at initialisation: 1.22, 1.25, 1.28; an eps-predictor that learned the
    # data scores far less, and least where x_t is mostly noise.
    for t, bound in ((50, 0.3), (300, 0.08), (700, 0.02)):
        eps = torch.randn(x0.shape, generator=gen)
        x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
        with torch.no_grad():
            mse = torch.mean((unet(x_t, torch.full((32,), t)) - eps) ** 2).item()
        assert mse < bound, (t, mse)


def test_shipped_unet_config_is_the_named_config() -> None:
    """`--config fashion-mnist-32` and the JSON beside the shipped weights describe the same network."""
    from mimicfast.models import GD_CONFIGS

    assert fmnist_unet_config() == GD_CONFIGS["fashion-mnist-32"]
