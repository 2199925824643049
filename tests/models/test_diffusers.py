"""diffusers interop: a tiny random UNet2DModel + scheduler saved locally loads as an eps_timestep denoiser."""

from __future__ import annotations

import pytest
import torch

from mimicfast.errors import CheckpointError
from mimicfast.models import load
from mimicfast.sampling import as_denoiser
from mimicfast.schedules import alphas_cumprod, linear_betas

diffusers = pytest.importorskip("diffusers")


def _unet(out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8)
    with torch.no_grad():  # diffusers zero-initialises nothing important, but make outputs clearly non-trivial
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def _save(root, unet, pipeline_layout: bool = True, **scheduler_kwargs):
    scheduler = diffusers.DDPMScheduler(**scheduler_kwargs)
    if pipeline_layout:
        unet.save_pretrained(root / "unet")
        scheduler.save_pretrained(root / "scheduler")
    else:
        unet.save_pretrained(root)
        scheduler.save_pretrained(root)
    return scheduler


@pytest.mark.parametrize("pipeline_layout", [True, False])
def test_unet2d_becomes_eps_timestep_denoiser(tmp_path, pipeline_layout):
    unet = _unet()
    _save(tmp_path, unet, pipeline_layout)
    model = load(tmp_path)
    assert model.denoiser_kind == "eps_timestep" and model.betas is None  # DDPM linear -> default schedule
    assert (model.image_size, model.in_channels, model.out_channels, model.learn_sigma) == (8, 3, 3, False)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([5.0, 700.0])
    reloaded = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet" if pipeline_layout else tmp_path)
    with torch.no_grad():
        assert torch.equal(model(x, t), reloaded(x, t).sample)
        torch.testing.assert_close(model(x, t), unet(x, t).sample, rtol=0, atol=1e-5)
        d = as_denoiser(model)(x, torch.tensor([0.3, 2.0]))
    assert d.shape == x.shape and bool(torch.isfinite(d).all())


def test_non_default_betas_are_exposed(tmp_path):
    scheduler = _save(tmp_path, _unet(), beta_schedule="scaled_linear", num_train_timesteps=500)
    model = load(tmp_path)
    assert model.betas is not None and model.betas.dtype == torch.float64
    torch.testing.assert_close(model.betas, scheduler.betas.double(), rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_types_convert_to_eps(tmp_path, prediction_type):
    unet = _unet()
    _save(tmp_path, unet, prediction_type=prediction_type)
    model = load(tmp_path)
    x, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([100.0, 600.0], dtype=torch.float64)
    abar = alphas_cumprod(linear_betas())[t.long()].reshape(-1, 1, 1, 1)
    with torch.no_grad():
        raw = model.unet.double()(x, t).sample
        eps = model(x, t)
    # Reconstruct the network's target from eps and compare (x_t = sqrt(abar) x0 + sqrt(1-abar) eps).
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    target = abar.sqrt() * eps - (1 - abar).sqrt() * x0 if prediction_type == "v_prediction" else x0
    torch.testing.assert_close(target, raw, rtol=1e-9, atol=1e-9)


def test_learned_range_returns_variance_channels(tmp_path):
    unet = _unet(out_channels=6)
    _save(tmp_path, unet, variance_type="learned_range")
    model = load(tmp_path)
    assert (model.out_channels, model.learn_sigma) == (6, True)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10.0])
    with torch.no_grad():
        out, raw = model(x, t), model.unet(x, t).sample
    assert torch.equal(out, raw) and out.shape == (1, 6, 8, 8)


def test_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers model directory"):
        load(tmp_path)
    unet = _unet()
    _save(tmp_path, unet)
    for f in (tmp_path / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="no .safetensors weights"):
        load(tmp_path)
