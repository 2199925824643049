"""End to end on the guided-diffusion parity network: sampler == Algorithm 1 with a real UNet (learned sigma)."""

from __future__ import annotations

import json

import pytest
import torch

from mimicfast.api import purify_batch
from mimicfast.models import guided_diffusion_unet
from mimicfast.presets import get_preset
from mimicfast.reference.algorithm1 import mimic_diffusion_reference
from mimicfast.sampling import PerSampleNoise, as_denoiser


@pytest.fixture(scope="module")
def gd_small(parity_dir):
    kwargs = json.loads((parity_dir / "gd_unet_small_kwargs.json").read_text())["create_model_kwargs"]
    net = guided_diffusion_unet(**kwargs)
    net.load_state_dict(torch.load(parity_dir / "gd_unet_small_state_dict.pt", weights_only=True), strict=True)
    return net.double().eval().requires_grad_(False)


@pytest.mark.parametrize("preset", ["paper", "released"])
def test_gd_unet_sampler_equals_reference(gd_small, preset) -> None:
    p = get_preset(preset).replace(steps=5, window=(0.3, 0.8))
    if preset == "paper":
        p = p.replace(scale=1e-3)
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    fast = purify_batch(as_denoiser(gd_small), y, p, [21])
    ref = mimic_diffusion_reference(
        gd_small, y, p, PerSampleNoise([21], y.shape[1:], dtype=torch.float64), learned_variance=True
    )
    rel = float((fast - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-6, f"relative error {rel:.3e}"
