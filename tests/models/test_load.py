"""mimicfast.load: format detection, configs, clear errors; mimicfast convert round trips bit-exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mimicfast
from mimicfast.cli import main as cli_main
from mimicfast.convert import convert
from mimicfast.default import UNET_PATH as DEFAULT_UNET
from mimicfast.errors import CheckpointError, InputError
from mimicfast.models import edm_network, load
from tests.models._edm_util import assert_close_to_fixture_d, edm_pickle_bytes, tiny_edm

GD_SMALL = "gd_unet_small_state_dict.pt"
EDM_SMALL = "edm_songunet_edmprecond_small"


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _ready(model: torch.nn.Module) -> bool:
    return not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.fixture
def edm_pkl(tmp_path):
    net = tiny_edm(seed=7)
    path = tmp_path / "edm-tiny.pkl"
    path.write_bytes(edm_pickle_bytes(net))
    return net, path


def test_top_level_export():
    assert mimicfast.load is load


def test_edm_pkl(edm_pkl):
    net, path = edm_pkl
    model = load(path)
    assert _same_tensors(model, net) and _ready(model) and model.denoiser_kind == "x0_sigma"
    assert model.checkpoint_config == {"family": "edm", "precond_class": "EDMPrecond", **net.init_kwargs}
    with pytest.raises(InputError, match="records its own configuration"):
        load(path, "gd-small-test")


def test_edm_state_dict_with_sidecar_json_matches_fixture(tmp_path, parity_dir):
    ckpt = tmp_path / "edm_small.pt"
    shutil.copy(parity_dir / f"{EDM_SMALL}_state_dict.pt", ckpt)
    with pytest.raises(CheckpointError, match="EDM state dict does not say its architecture"):
        load(ckpt)
    meta = json.loads((parity_dir / f"{EDM_SMALL}_kwargs.json").read_text())
    (tmp_path / "edm_small.json").write_text(json.dumps(dict(meta, family="edm")))  # fixture layout + family
    model = load(ckpt)
    vec = torch.load(parity_dir / f"{EDM_SMALL}_vectors.pt", weights_only=True)
    with torch.no_grad():
        assert_close_to_fixture_d(model(vec["x"], vec["sigma"]), vec)
    assert _ready(model) and model.checkpoint_config["model_channels"] == 16


def test_edm_state_dict_config_mismatch_names_keys(tmp_path, parity_dir):
    meta = json.loads((parity_dir / f"{EDM_SMALL}_kwargs.json").read_text())
    cfg = dict(meta["kwargs"], family="edm", precond_class="EDMPrecond", num_blocks=1)
    with pytest.raises(CheckpointError, match=r"does not match its EDM EDMPrecond config: .*78 unexpected keys "
                                              r"\(model\.enc\.16x16_block1\."):
        load(parity_dir / f"{EDM_SMALL}_state_dict.pt", cfg)
    with pytest.raises(CheckpointError, match="precond_class must be one of EDMPrecond"):
        load(parity_dir / f"{EDM_SMALL}_state_dict.pt", {"family": "edm"})
    with pytest.raises(CheckpointError, match="'family' must be one of"):
        load(parity_dir / f"{EDM_SMALL}_state_dict.pt", {"model_channels": 16})
    # The fixture's own kwargs file (no "family") is a valid config: precond_class implies EDM.
    model = load(parity_dir / f"{EDM_SMALL}_state_dict.pt", parity_dir / f"{EDM_SMALL}_kwargs.json")
    assert model.checkpoint_config["family"] == "edm"


def test_guided_diffusion_autodetect_and_named_config(parity_dir):
    model = load(parity_dir / GD_SMALL)
    assert model.checkpoint_config == {"family": "guided_diffusion", "config": "gd-small-test"}
    assert model.denoiser_kind == "eps_timestep" and _ready(model)
    sd = torch.load(parity_dir / GD_SMALL, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert _same_tensors(load(parity_dir / GD_SMALL, "gd-small-test"), model)
    with pytest.raises(CheckpointError, match="does not match config 'imagenet64-cond'"):
        load(parity_dir / GD_SMALL, "imagenet64-cond")


def test_bad_files_and_configs(tmp_path, edm_pkl):
    _, pkl = edm_pkl
    data = pkl.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="cut.pkl: truncated or corrupt pickle"):
        load(cut)
    sd_file = tmp_path / "w.pt"
    torch.save({"model.map_layer0.weight": torch.zeros(2, 2)}, sd_file)
    sd_file.write_bytes(sd_file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="w.pt: not a readable PyTorch file"):
        load(sd_file)
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load(other)
    with pytest.raises(InputError, match="unknown config 'no-such-config'"):
        load(other, "no-such-config")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable JSON file"):
        load(other, bad_json)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load(tmp_path / "nothing.pt")


def test_convert_edm_pkl_round_trip_bit_exact(tmp_path, edm_pkl):
    net, pkl = edm_pkl
    weights, cfg = convert(pkl, tmp_path / "out" / "edm-tiny")
    assert (weights.name, cfg.name) == ("edm-tiny.safetensors", "edm-tiny.json")
    assert json.loads(cfg.read_text())["family"] == "edm"
    back = load(weights)
    assert _same_tensors(back, net) and _ready(back)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(x, 0.5), net(x, 0.5))
    with pytest.raises(InputError, match="would overwrite"):
        convert(weights, weights)


def test_convert_guided_diffusion_round_trip(tmp_path, parity_dir):
    weights, _ = convert(parity_dir / GD_SMALL, tmp_path / "gd.safetensors")
    assert _same_tensors(load(weights), load(parity_dir / GD_SMALL))


def test_convert_cli(tmp_path, edm_pkl, capsys):
    net, pkl = edm_pkl
    assert cli_main(["convert", str(pkl), str(tmp_path / "cli")]) == 0
    assert "cli.safetensors" in capsys.readouterr().out
    assert _same_tensors(load(tmp_path / "cli.safetensors"), net)
    assert cli_main(["convert", str(tmp_path / "missing.pkl"), str(tmp_path / "x")]) == 2
    assert "missing.pkl" in capsys.readouterr().err


def test_edm_network_vp_from_safetensors_sidecar(tmp_path):
    """A VPPrecond with non-default kwargs survives convert: its JSON carries every constructor argument."""
    net = tiny_edm(precond_class="VPPrecond", beta_d=10.0, M=500)
    pkl = tmp_path / "vp.pkl"
    pkl.write_bytes(edm_pickle_bytes(net))
    weights, _ = convert(pkl, tmp_path / "vp")
    back = load(weights)
    assert (back.beta_d, back.M, back.sigma_min) == (10.0, 500, net.sigma_min) and _same_tensors(back, net)
    assert isinstance(back, type(edm_network("VPPrecond", img_resolution=8, img_channels=3, model_channels=8,
                                             channel_mult=[1], num_blocks=1, attn_resolutions=[])))


def test_sidecar_guidance_scales_reach_the_model_not_its_constructor(tmp_path):
    weights = tmp_path / "unet.safetensors"
    shutil.copy(DEFAULT_UNET, weights)
    config = json.loads(DEFAULT_UNET.with_suffix(".json").read_text())
    sidecar = tmp_path / "unet.json"
    sidecar.write_text(json.dumps(dict(config, guidance_scale={"released": 250})))
    model = load(weights)
    assert model.guidance_scales == {"released": 250.0}
    assert "guidance_scale" not in model.checkpoint_config  # not part of the network (nor of its digest)
    assert mimicfast.Purifier(model, preset="released").preset.scale == 250.0
    converted, _ = convert(weights, tmp_path / "converted")
    assert load(converted).guidance_scales == {"released": 250.0}  # they travel with the weights
    sidecar.write_text(json.dumps({k: v for k, v in config.items() if k != "guidance_scale"}))
    assert not hasattr(load(weights), "guidance_scales")
    for bad, match in (({"releasd": 1.0}, "preset name"), ({"released": -1}, "finite number >= 0"),
                       ({"released": "big"}, "finite number >= 0"), ([1.0], "preset name -> scale")):
        sidecar.write_text(json.dumps(dict(config, guidance_scale=bad)))
        with pytest.raises(CheckpointError, match=match) as err:
            load(weights)
        assert "unet.json" in str(err.value) and "\n" not in str(err.value)
