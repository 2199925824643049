"""Safe checkpoint loading: formats, containers, corrupt / malicious files, config mismatches."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from mimicfast.errors import CheckpointError, InputError
from mimicfast.models.guided_diffusion import guided_diffusion_unet
from mimicfast.models.loader import GD_CONFIGS, load, load_guided_diffusion, load_state_dict_file


@pytest.fixture(scope="module")
def small(parity_dir):
    sd = torch.load(parity_dir / "gd_unet_small_state_dict.pt", weights_only=True)
    vec = torch.load(parity_dir / "gd_unet_small_vectors.pt", weights_only=True)
    return sd, vec


class _RunsCode:
    """Unpickling this would call ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()  # as sets: safetensors stores keys sorted
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_named_configs_match_fixture_kwargs(parity_dir):
    small_kw = json.loads((parity_dir / "gd_unet_small_kwargs.json").read_text())["create_model_kwargs"]
    assert GD_CONFIGS["gd-small-test"] == small_kw
    full_kw = json.loads((parity_dir / "gd_unet_256_uncond_full_keys.json").read_text())["create_model_kwargs"]
    assert GD_CONFIGS["imagenet256-uncond"] == {**full_kw, "use_fp16": False}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_and_parity(tmp_path, small, suffix):
    sd, vec = small
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    _assert_same(load_state_dict_file(path), sd)
    model = load_guided_diffusion(path, "gd-small-test")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        out = model(vec["x"], vec["timesteps"])
    assert (out - vec["out"]).abs().max().item() <= 2e-5


def test_dtype_choice(parity_dir, small):
    _, vec = small
    model = load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        out = model(vec["x"].double(), vec["timesteps"])
    assert (out - vec["out_f64"]).abs().max().item() <= 1e-9
    bf16 = load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test", dtype=torch.bfloat16)
    with torch.no_grad():
        out = bf16(vec["x"], vec["timesteps"])
    assert out.dtype == torch.float32 and (out - vec["out"]).abs().max().item() < 0.25  # bf16 has 8 bits
    with pytest.raises(InputError, match="floating"):
        load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test", dtype=torch.int32)


def test_legacy_torch_format_and_containers(tmp_path, small):
    sd, _ = small
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict_file(legacy), sd)

    other = {k: v + 1 for k, v in sd.items()}
    cases = {
        "sd_in_state_dict.pt": ({"state_dict": sd, "epoch": 3}, sd),
        "model_and_ema.pt": ({"model": other, "ema": sd, "step": 10}, sd),  # EMA preferred
        "model_only.bin": ({"model": sd}, sd),
        "data_parallel.ckpt": ({f"module.{k}": v for k, v in sd.items()}, sd),
    }
    for name, (obj, expected) in cases.items():
        torch.save(obj, tmp_path / name)
        _assert_same(load_state_dict_file(tmp_path / name), expected)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict_file(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="directory"):
        load_state_dict_file(tmp_path)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="suffix"):
        load_state_dict_file(tmp_path / "w.npz")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_garbage_and_empty_files(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    tensors = {"a": torch.arange(1000.0), "b": torch.ones(3, 4)}
    if suffix == ".pt":
        torch.save(tensors, good)
    else:
        save_file(tensors, str(good))
    data = good.read_bytes()
    files = {
        f"truncated{suffix}": data[: len(data) // 2],
        f"garbage{suffix}": bytes(range(256)) * 8,
        f"empty{suffix}": b"",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_state_dict_file(path)
        assert name in str(info.value)
        with pytest.raises(CheckpointError):
            load_guided_diffusion(path, "gd-small-test")


def test_truncated_pt_message_says_so(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"a": torch.zeros(10_000)}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict_file(path)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.ones(2), "x": _RunsCode(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused.*never executes code"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_not_a_state_dict(tmp_path):
    cases = {
        "list.pt": ([torch.ones(2)], "mapping"),
        "tensor.pt": (torch.ones(2), "mapping"),
        "mixed.pt": ({"w": torch.ones(2), "n": 3}, "'n' has type int"),
        "empty_dict.pt": ({}, "empty"),
        "int_keys.pt": ({0: torch.ones(2)}, "not a string"),
    }
    for name, (obj, match) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=match):
            load_state_dict_file(tmp_path / name)


def test_wrong_config_names_config_keys_and_matching_config(parity_dir, small):
    path = parity_dir / "gd_unet_small_state_dict.pt"
    # The 256 config is built on the meta device only: this must not allocate 2 GB.
    with pytest.raises(CheckpointError) as info:
        load_guided_diffusion(path, "imagenet256-uncond")
    msg = str(info.value)
    assert "does not match config 'imagenet256-uncond'" in msg
    assert "missing keys" in msg and "wrongly shaped keys" in msg
    assert "matches config 'gd-small-test'" in msg

    cond = {**GD_CONFIGS["gd-small-test"], "class_cond": True}
    with pytest.raises(CheckpointError, match=r"'<custom>': 1 missing keys \(label_emb.weight\)"):
        load_guided_diffusion(path, cond)


def test_wrong_shape_and_unexpected_key(tmp_path, small):
    sd, _ = small
    bad = dict(sd)
    bad["out.2.bias"] = torch.zeros(3)
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(
        CheckpointError,
        match=r"1 unexpected keys \(extra.weight\); 1 wrongly shaped keys "
        r"\(out.2.bias: file \[3\] vs model \[6\]\)",
    ):
        load_guided_diffusion(path, "gd-small-test")


def test_unknown_config(parity_dir):
    with pytest.raises(InputError, match="unknown guided-diffusion config 'nope'"):
        load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "nope")
    with pytest.raises(CheckpointError, match="config lacks num_channels, num_res_blocks"):
        load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", {"image_size": 32})


def test_named_configs_build_on_meta():
    for name, kwargs in GD_CONFIGS.items():
        with torch.device("meta"):
            model = guided_diffusion_unet(**kwargs)
        channels = kwargs.get("in_channels", 3)
        assert model.learn_sigma == kwargs["learn_sigma"], name
        assert model.out_channels == channels * (2 if kwargs["learn_sigma"] else 1), name
        assert (model.num_classes == 1000) == kwargs["class_cond"], name


def test_an_unknown_suffix_names_every_accepted_format(tmp_path):
    path = tmp_path / "model.zip"
    path.write_bytes(b"PK")
    with pytest.raises(CheckpointError, match=r"'\.zip'.*\.safetensors, \.pkl, \.pickle"):
        load(path)
