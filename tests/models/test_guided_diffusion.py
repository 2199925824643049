"""guided-diffusion UNet: parity with the reference fixtures, state-dict layout, every option, input-VJP."""

from __future__ import annotations

import json

import pytest
import torch

from mimicfast.errors import InputError
from mimicfast.models.guided_diffusion import AttentionBlock, GuidedDiffusionUNet, guided_diffusion_unet
from mimicfast.models.random_init import randomize_weights

# Tiny config (32 channels is the minimum: GroupNorm always has 32 groups); 16x16 inputs.
TINY = dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    learn_sigma=True,
    attention_resolutions="8",
    num_heads=2,
    use_scale_shift_norm=True,
    resblock_updown=True,
)




@pytest.fixture(scope="module")
def fixture(parity_dir):
    kwargs = json.loads((parity_dir / "gd_unet_small_kwargs.json").read_text())
    sd = torch.load(parity_dir / "gd_unet_small_state_dict.pt", weights_only=True)
    vec = torch.load(parity_dir / "gd_unet_small_vectors.pt", weights_only=True)
    model = guided_diffusion_unet(**kwargs["create_model_kwargs"])
    model.load_state_dict(sd, strict=True)
    return kwargs, sd, vec, model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model_f64(fixture):
    """The fixture weights in a float64 model, frozen."""
    kwargs, sd, _, _ = fixture
    model = guided_diffusion_unet(**kwargs["create_model_kwargs"]).double()
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False)


def _hooked_forward(model, x, t):
    """Forward that also records the time_embed and middle_block outputs."""
    seen = {}
    hooks = [
        model.time_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("time_embed_out", o)),
        model.middle_block.register_forward_hook(lambda m, i, o: seen.__setitem__("middle_out", o)),
    ]
    try:
        with torch.no_grad():
            out = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def test_state_dict_layout_equals_fixture(fixture):
    kwargs, sd, _, model = fixture
    ours = model.state_dict()
    assert list(ours) == list(sd)
    assert all(ours[k].shape == sd[k].shape for k in sd)
    assert sum(p.numel() for p in model.parameters()) == kwargs["num_params"]
    assert model.out_channels == 6 and model.learn_sigma and model.num_classes is None
    assert GuidedDiffusionUNet.denoiser_kind == "eps_timestep"


def test_float32_parity(fixture):
    _, _, vec, model = fixture
    out, seen = _hooked_forward(model, vec["x"], vec["timesteps"])
    assert out.dtype == torch.float32
    assert (out - vec["out"]).abs().max().item() <= 2e-5
    assert (seen["time_embed_out"] - vec["time_embed_out"]).abs().max().item() <= 2e-5
    assert (seen["middle_out"] - vec["middle_out"]).abs().max().item() <= 2e-5


def test_float64_parity(fixture, model_f64):
    vec = fixture[2]
    out, seen = _hooked_forward(model_f64, vec["x"].double(), vec["timesteps"])
    assert out.dtype == torch.float64
    assert (out - vec["out_f64"]).abs().max().item() <= 1e-9
    # The fixture's intermediates are float32 (no f64 versions): float64 agrees to that reference's own float32
    # rounding (measured 1.8e-5 for middle_out, max abs 7).
    assert (seen["middle_out"] - vec["middle_out"].double()).abs().max().item() <= 5e-5
    assert (seen["time_embed_out"] - vec["time_embed_out"].double()).abs().max().item() <= 2e-5


def test_full_256_uncond_layout_on_meta(parity_dir):
    full = json.loads((parity_dir / "gd_unet_256_uncond_full_keys.json").read_text())
    with torch.device("meta"):
        model = guided_diffusion_unet(**full["create_model_kwargs"])
    sd = model.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(e["key"], e["shape"]) for e in full["keys"]]
    assert sum(p.numel() for p in model.parameters()) == full["num_params"] == 552_814_086
    # use_fp16=True: exactly the torso's conv weights/biases are half (guided-diffusion's convert_to_fp16).
    convs = {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and n.split(".")[0] != "out"
        for p in ("weight", "bias")
    }
    half = {k for k, v in sd.items() if v.dtype == torch.float16}
    assert half == convs and len(half) > 0
    assert all(v.dtype == torch.float32 for k, v in sd.items() if k not in half)
    assert sd["time_embed.0.weight"].dtype == sd["out.2.weight"].dtype == torch.float32


def test_use_fp16_forward_close_to_float32(fixture):
    kwargs, sd, vec, _ = fixture
    model = guided_diffusion_unet(**{**kwargs["create_model_kwargs"], "use_fp16": True}).eval()
    model.load_state_dict(sd, strict=True)  # float32 file into a half torso: cast on copy
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert model.input_blocks[1][0].emb_layers[1].weight.dtype == torch.float32
    with torch.no_grad():
        out = model(vec["x"], vec["timesteps"])
    assert out.dtype == torch.float32
    err = (out - vec["out"]).abs().max().item()
    assert 0 < err < 5e-2  # half-precision torso: not exact, but close (output max abs about 3)


def test_class_conditional():
    model = randomize_weights(guided_diffusion_unet(**TINY, class_cond=True), seed=1)
    assert model.num_classes == 1000 and model.label_emb.weight.shape == (1000, 128)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    with torch.no_grad():
        a = model(x, t, torch.tensor([1, 2]))
        b = model(x, t, torch.tensor([1, 3]))
    assert a.shape == (2, 6, 16, 16)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(InputError, match="class labels"):
        model(x, t)


def _reference_attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """guided-diffusion's QKVAttention(Legacy) math written out: q, k scaled by ch**-1/4, softmax over keys."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if new_order:
        q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    s = ch**-0.25
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)


@pytest.mark.parametrize("new_order", [False, True])
@pytest.mark.parametrize("heads_kw", [dict(num_heads=4), dict(num_head_channels=16), dict(num_heads=1)])
def test_attention_block_matches_reference_formula(new_order, heads_kw):
    block = randomize_weights(AttentionBlock(64, use_new_attention_order=new_order, **heads_kw).double(), seed=2)
    x = torch.randn(2, 64, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x)
        flat = x.reshape(2, 64, -1)
        ref = flat + block.proj_out(_reference_attention(block.qkv(block.norm(flat)), block.num_heads, new_order))
    assert (ours - ref.reshape(x.shape)).abs().max().item() <= 1e-12


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_runs_the_fused_kernel(new_order):
    """q, k, v reach sdpa 4-d with the head dimension at stride 1, so a fused kernel (flash) can run; with
    transposed views only the math kernel can, which materialises the [T, T] scores (forced here, on the CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block = randomize_weights(AttentionBlock(64, use_new_attention_order=new_order, num_head_channels=16), seed=2)
    x = torch.randn(2, 64, 4, 6)
    with torch.no_grad():
        expected = block(x)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fused = block(x)
    assert (fused - expected).abs().max().item() <= 1e-5


def test_new_attention_order_is_a_qkv_permutation():
    """A new-order model equals a legacy model whose qkv rows are reordered (head,qkv,ch) -> (qkv,head,ch)."""
    legacy = randomize_weights(guided_diffusion_unet(**TINY).double(), seed=3)
    new = guided_diffusion_unet(**TINY, use_new_attention_order=True).double().eval()
    sd = legacy.state_dict()
    for key in [k for k in sd if k.endswith(("qkv.weight", "qkv.bias"))]:
        w = sd[key]
        c3, heads = w.shape[0], 2
        sd[key] = w.reshape(heads, 3, c3 // (3 * heads), *w.shape[1:]).transpose(0, 1).reshape(w.shape)
    new.load_state_dict(sd, strict=True)
    x, t = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([3, 900])
    with torch.no_grad():
        assert (legacy(x, t) - new(x, t)).abs().max().item() <= 1e-12


@pytest.mark.parametrize("conv_resample", [True, False])
def test_plain_resampling_blocks(conv_resample):
    """resblock_updown=False: Downsample ``op`` / Upsample ``conv`` (learned iff conv_resample)."""
    model = GuidedDiffusionUNet(
        image_size=16,
        in_channels=1,
        model_channels=32,
        out_channels=1,
        num_res_blocks=1,
        attention_resolutions=(2,),
        channel_mult=(1, 1),
        conv_resample=conv_resample,
    )
    keys = model.state_dict().keys()
    assert ("input_blocks.2.0.op.weight" in keys) == conv_resample
    assert ("output_blocks.1.2.conv.weight" in keys) == conv_resample
    randomize_weights(model, seed=4)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8), torch.tensor([0.5, 999.0]))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all() and not model.learn_sigma


def test_create_model_defaults_and_errors():
    with torch.device("meta"):
        m64 = guided_diffusion_unet(image_size=64, num_channels=64, num_res_blocks=1)
        m512 = guided_diffusion_unet(image_size=512, num_channels=64, num_res_blocks=1, attention_resolutions="32")
    assert m64.channel_mult == (1, 2, 3, 4) and m64.out_channels == 3
    assert m512.channel_mult == (0.5, 1, 1, 2, 2, 4, 4) and m512.input_blocks[0][0].weight.shape[0] == 32
    with pytest.raises(InputError, match="channel_mult"):
        guided_diffusion_unet(image_size=48, num_channels=32, num_res_blocks=1)
    with pytest.raises(InputError, match="num_head_channels"):
        guided_diffusion_unet(**{**TINY, "num_head_channels": 24})


def test_bad_inputs_and_scalar_timestep():
    model = randomize_weights(guided_diffusion_unet(**TINY), seed=5)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, 7), model(x, torch.tensor([7, 7])))
        assert torch.equal(model(x, torch.tensor([7.0, 8.0])), model(x, torch.tensor([7, 8])))
    for bad, match in [
        (torch.randn(2, 1, 16, 16), "x must be"),
        (torch.randn(2, 3, 13, 16), "divisible"),
        (torch.ones(2, 3, 16, 16, dtype=torch.long), "floating"),
    ]:
        with pytest.raises(InputError, match=match):
            model(bad, 1)
    with pytest.raises(InputError, match="timesteps"):
        model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="unconditional"):
        model(x, 1, torch.tensor([0, 1]))


def test_input_vjp_with_frozen_params(fixture, model_f64):
    """d/dx <w, f(x)> through the fixture model in float64 equals a central finite difference."""
    vec, model = fixture[2], model_f64
    g = torch.Generator().manual_seed(6)
    x = vec["x"][1:].double().requires_grad_(True)  # one sample (t = 700) keeps the test fast
    w = torch.randn(vec["out"][1:].shape, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = vec["timesteps"][1:]
    (grad,) = torch.autograd.grad((model(x, t) * w).sum(), x)
    assert all(p.grad is None for p in model.parameters())
    eps = 1e-6
    with torch.no_grad():
        fd = ((model(x + eps * v, t) - model(x - eps * v, t)) * w).sum() / (2 * eps)
    assert abs((grad * v).sum().item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item()))


def test_gradient_checkpointing_gives_same_input_grad():
    plain = randomize_weights(guided_diffusion_unet(**TINY).double(), seed=7).requires_grad_(False)
    ckpt = guided_diffusion_unet(**TINY, use_checkpoint=True).double().eval().requires_grad_(False)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(model(xi, torch.tensor([10])).square().sum(), xi)
        grads.append(gi)
    assert (grads[0] - grads[1]).abs().max().item() <= 1e-12
