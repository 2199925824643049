"""EDM networks: parity with NVlabs/edm fixtures (f64 ideal and f32), layouts of the full configs, variants."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mimicfast.models import edm_network
from mimicfast.models.edm_layers import Conv2d, UNetBlock
from mimicfast.models.random_init import randomize_weights
from tests.models._edm_util import TINY_DDPMPP, tiny_edm

FIXTURES = ["edm_songunet_vpprecond_small", "edm_songunet_edmprecond_small", "edm_dhariwalunet_edmprecond_small"]
F64_ATOL = 1e-9
F32_ATOL = 3e-5


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, parity_dir):
    name = request.param
    meta = json.loads((parity_dir / f"{name}_kwargs.json").read_text())
    sd = torch.load(parity_dir / f"{name}_state_dict.pt", weights_only=True)
    vec = torch.load(parity_dir / f"{name}_vectors.pt", weights_only=True)
    net = edm_network(meta["precond_class"], **meta["kwargs"])
    net.load_state_dict(sd, strict=True)
    return name, meta, sd, vec, net.eval().requires_grad_(False)


def _run(net, vec, dtype):
    """D(x, sigma) plus the precond's inner-net inputs/outputs and the two named intermediates."""
    net = net.to(dtype)
    seen = {}

    def grab(key):
        return lambda m, args, kwargs, out: seen.__setitem__(key, (args, kwargs, out))

    hooks = [net.model.register_forward_hook(grab("model"), with_kwargs=True),
             net.model.map_layer1.register_forward_hook(grab("map_layer1"), with_kwargs=True),
             net.model.dec[_bottleneck_name(net)].register_forward_hook(grab("bottleneck"), with_kwargs=True)]
    labels = vec.get("class_labels")
    try:
        with torch.no_grad():
            d = net(vec["x"].to(dtype), vec["sigma"].to(dtype), None if labels is None else labels.to(dtype))
    finally:
        for h in hooks:
            h.remove()
        net.float()
    (model_in, c_noise), _, f_x = seen["model"]
    return dict(D_x=d, model_in=model_in, c_noise=c_noise, F_x=f_x, map_layer1_out=seen["map_layer1"][2],
                bottleneck_out=seen["bottleneck"][2])


def _bottleneck_name(net) -> str:
    """The second decoder block, ``<lowest>x<lowest>_in1``, whose output the fixtures record."""
    lowest = net.img_resolution >> (len(net.init_kwargs["channel_mult"]) - 1)
    return f"{lowest}x{lowest}_in1"


def test_state_dict_keys_order_and_buffers(fixture):
    name, meta, sd, _, net = fixture
    ours = net.state_dict()
    assert list(ours) == list(sd)
    assert all(ours[k].shape == v.shape and ours[k].dtype == v.dtype for k, v in sd.items())
    assert sum(p.numel() for p in net.parameters()) == meta["num_params"]
    assert len(ours) == meta["num_state_dict_entries"]
    assert f"model.dec.{_bottleneck_name(net)}" == meta["bottleneck_block"]
    # resample_filter buffers as constructed ([1,1] filter -> all 0.25), on a fresh random instance too
    fresh = edm_network(meta["precond_class"], **meta["kwargs"]).state_dict()
    filters = [k for k in sd if k.endswith("resample_filter")]
    assert filters and all(torch.equal(fresh[k], sd[k]) for k in filters)


def test_float64_matches_ideal_vectors(fixture):
    name, _, _, vec, net = fixture
    out = _run(net, vec, torch.float64)
    errors = {k: (out[k] - vec[f"{k}_f64"]).abs().max().item() for k in ("D_x", "F_x", "model_in", "c_noise")}
    print(f"\n{name} f64 max abs errors: {errors}")
    assert all(out[k].dtype == torch.float64 for k in ("D_x", "F_x", "model_in", "c_noise"))
    assert max(errors.values()) <= F64_ATOL, errors


def test_float32_matches_reference(fixture):
    name, _, _, vec, net = fixture
    out = _run(net, vec, torch.float32)
    assert out["D_x"].dtype == torch.float32
    tol_d = F32_ATOL * vec["sigma"].clamp(min=1).reshape(-1, 1, 1, 1)
    err_d = (out["D_x"] - vec["D_x"]).abs()
    errors = {k: (out[k] - vec[k]).abs().max().item()
              for k in ("F_x", "model_in", "c_noise", "map_layer1_out", "bottleneck_out")}
    print(f"\n{name} f32 max abs errors: D_x {err_d.max().item():.3g} {errors}")
    assert bool((err_d <= tol_d).all())
    assert max(errors.values()) <= F32_ATOL, errors


def test_unet_block_two_heads(parity_dir):
    meta = json.loads((parity_dir / "edm_unetblock_2head_unit_kwargs.json").read_text())
    sd = torch.load(parity_dir / "edm_unetblock_2head_unit_state_dict.pt", weights_only=True)
    vec = torch.load(parity_dir / "edm_unetblock_2head_unit_vectors.pt", weights_only=True)
    block = UNetBlock(**meta["kwargs"]).eval()
    block.load_state_dict(sd, strict=True)
    assert list(block.state_dict()) == list(sd)
    assert sum(p.numel() for p in block.parameters()) == meta["num_params"]
    with torch.no_grad():
        out32 = block(vec["x"], vec["emb"])
        out64 = block.double()(vec["x"].double(), vec["emb"].double())
    err32, err64 = (out32 - vec["out"]).abs().max().item(), (out64 - vec["out_f64"]).abs().max().item()
    print(f"\nunetblock_2head f32 {err32:.3g} f64 {err64:.3g}")
    assert err64 <= F64_ATOL and err32 <= F32_ATOL


def test_unet_block_attention_runs_the_fused_kernel():
    """q, k, v reach sdpa 4-d with the channel dimension at stride 1, so a fused kernel (flash) can run; with
    transposed views only the math kernel can (forced here, on the CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block = randomize_weights(UNetBlock(32, 32, 16, attention=True, channels_per_head=8), seed=1).eval()
    assert block.num_heads == 4
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    with torch.no_grad():
        expected = block(x, emb)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fused = block(x, emb)
    assert (fused - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("keys_file", ["edm_songunet_ddpmpp_cifar10_full_keys.json",
                                       "edm_dhariwalunet_adm_imagenet64_full_keys.json"])
def test_full_config_keys_and_shapes(parity_dir, keys_file):
    spec = json.loads((parity_dir / keys_file).read_text())
    with torch.device("meta"):
        net = edm_network(spec["precond_class"], **spec["kwargs"])
    buffers = {name for name, _ in net.named_buffers()}
    ours = [dict(key=k, shape=list(v.shape), dtype=str(v.dtype).removeprefix("torch."),
                 kind="buffer" if k in buffers else "param", numel=v.numel()) for k, v in net.state_dict().items()]
    assert ours == spec["keys"]
    assert sum(p.numel() for p in net.parameters()) == spec["num_params"]
    assert len(ours) == spec["num_state_dict_entries"]


def test_input_vjp_with_frozen_params(parity_dir):
    """J^T r through D agrees with a central difference of <r, D(x + h v)> in float64; no param gets a grad."""
    meta = json.loads((parity_dir / "edm_songunet_edmprecond_small_kwargs.json").read_text())
    net = edm_network(meta["precond_class"], **meta["kwargs"])
    net.load_state_dict(torch.load(parity_dir / "edm_songunet_edmprecond_small_state_dict.pt", weights_only=True))
    net = net.eval().requires_grad_(False).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    r, v = torch.randn(x.shape, generator=g, dtype=torch.float64), torch.randn(x.shape, generator=g,
                                                                               dtype=torch.float64)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad((net(x, sigma) * r).sum(), x)
    h = 1e-6
    with torch.no_grad():
        fd = ((net(x + h * v, sigma) - net(x - h * v, sigma)) * r).sum() / (2 * h)
    assert abs((grad * v).sum().item() - fd.item()) <= 1e-6 * abs(fd.item()) + 1e-8
    assert all(p.grad is None for p in net.parameters())


def test_scalar_sigma_and_default_labels():
    net = tiny_edm(label_dim=4, augment_dim=0)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = net(x, 0.7)
        b = net(x, torch.full([3], 0.7), class_labels=torch.zeros(3, 4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert net.denoiser_kind == "x0_sigma" and (net.img_resolution, net.img_channels, net.label_dim) == (8, 3, 4)


def test_augment_labels_reach_the_mapping_network():
    net = tiny_edm()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = net(x, 1.0)
        zeros = net(x, 1.0, augment_labels=torch.zeros(2, 9))
        aug = net(x, 1.0, augment_labels=torch.ones(2, 9))
    torch.testing.assert_close(plain, zeros, rtol=0, atol=0)
    assert (plain - aug).abs().max() > 1e-3


@pytest.mark.parametrize("variant", [
    dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual", resample_filter=[1, 3, 3, 1]),
    dict(encoder_type="skip", decoder_type="skip"),
    dict(precond_class="VEPrecond", embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
         resample_filter=[1, 3, 3, 1], label_dim=3),
    dict(precond_class="VPPrecond", attn_resolutions=[8, 4], num_blocks=2),
])
def test_songunet_variants_layout_and_forward(variant):
    net = tiny_edm(**variant).double()
    sd = net.state_dict()
    if variant.get("encoder_type") == "residual":
        assert sd["model.enc.4x4_aux_residual.weight"].shape == (16, 3, 3, 3)  # from the 3-channel image
        assert sd["model.enc.4x4_aux_residual.resample_filter"].shape == (1, 1, 4, 4)
        assert sd["model.map_noise.freqs"].shape == (8,)  # fourier: noise_channels // 2 = 16 // 2
    if variant.get("encoder_type") == "skip":
        assert sd["model.enc.4x4_aux_skip.weight"].shape == (16, 3, 1, 1)
        assert "model.enc.4x4_aux_down.resample_filter" in sd and "model.enc.4x4_aux_down.weight" not in sd
        assert "model.dec.8x8_aux_up.resample_filter" in sd and "model.dec.4x4_aux_conv.weight" in sd
    if variant.get("attn_resolutions") == [8, 4]:
        assert "model.enc.8x8_block1.qkv.weight" in sd and "model.dec.8x8_block2.qkv.weight" in sd
        assert "model.dec.8x8_block0.qkv.weight" not in sd
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        d = net(x, torch.tensor([0.5, 3.0], dtype=torch.float64))
    assert d.shape == x.shape and d.dtype == torch.float64 and bool(torch.isfinite(d).all())


def test_dhariwal_small_channels_get_no_attention():
    with torch.device("meta"):
        net = edm_network("EDMPrecond", img_resolution=8, img_channels=3, model_type="DhariwalUNet",
                          model_channels=16, channel_mult=[2, 4], num_blocks=1, attn_resolutions=[8, 4])
    keys = net.state_dict().keys()
    assert "model.enc.8x8_block0.qkv.weight" not in keys  # 32 channels -> 32 // 64 = 0 heads
    assert net.model.enc["4x4_block0"].num_heads == 1 and "model.enc.4x4_block0.qkv.weight" in keys
    assert "model.enc.4x4_down.skip.weight" not in keys and "model.enc.4x4_down.skip.resample_filter" in keys


def test_resampling_convs():
    """[1,1] FIR up/down equal nearest upsampling and 2x2 average pooling; [1,3,3,1] preserves constants."""
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    up = Conv2d(4, 4, kernel=0, up=True).double()
    down = Conv2d(4, 4, kernel=0, down=True).double()
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"), rtol=0, atol=0)
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2), rtol=1e-15, atol=1e-15)
    ones = torch.ones(1, 2, 8, 8, dtype=torch.float64)
    for layer in (Conv2d(2, 2, kernel=0, down=True, resample_filter=[1, 3, 3, 1]),
                  Conv2d(2, 2, kernel=0, up=True, resample_filter=[1, 3, 3, 1])):
        y = layer.double()(ones)
        torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.ones_like(y[..., 2:-2, 2:-2]))


def test_idddpm_precond_levels_and_output():
    net = randomize_weights(edm_network("iDDPMPrecond", img_resolution=8, img_channels=3, model_type="SongUNet",
                                **{k: TINY_DDPMPP[k] for k in ("model_channels", "channel_mult", "num_blocks",
                                                              "attn_resolutions")}))
    assert net.u.shape == (1001,) and net.u[-1] == 0 and bool((net.u[:-1] > net.u[1:]).all())
    assert net.model.dec["8x8_aux_conv"].out_channels == 6  # eps + variance channels
    sig = net.u[[10, 500]]
    assert torch.equal(net.round_sigma(sig * 1.0001, return_index=True), torch.tensor([10, 500]))
    with torch.no_grad():
        d = net(torch.randn(2, 3, 8, 8), sig)
    assert d.shape == (2, 3, 8, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="precond_class"):
        edm_network("NoSuchPrecond", img_resolution=8, img_channels=3)
    with pytest.raises(ValueError, match="model_type"):
        edm_network("EDMPrecond", img_resolution=8, img_channels=3, model_type="Transformer")
    with pytest.raises(ValueError, match="encoder_type"):
        edm_network("EDMPrecond", img_resolution=8, img_channels=3, model_type="SongUNet", encoder_type="x")
