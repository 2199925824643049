"""Hostile diffusers model directories: every bad file, config or weight ends in one CheckpointError line, never a
hang, a traceback of another type, a huge allocation, or a network with silently random weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimicfast.errors import CheckpointError
from mimicfast.models import load

diffusers = pytest.importorskip("diffusers")

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny UNet2DModel (two levels, attention in one) and DDPM scheduler in the pipeline layout."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8)
    root = tmp_path_factory.mktemp("diffusers")
    unet.save_pretrained(root / "unet")
    diffusers.DDPMScheduler().save_pretrained(root / "scheduler")
    return root


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    """A fresh copy of the saved model to damage."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _load_fails(root: Path, match: str) -> str:
    """Load in a daemon thread (a hang fails the test instead of the suite); the one-line error message."""
    box: dict = {}

    def run():
        try:
            load(root)
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "still loading after 30 s"
    error = box.get("error")
    assert isinstance(error, CheckpointError), f"expected a CheckpointError, got {error!r}"
    msg = str(error)
    assert "\n" not in msg and len(msg) <= 2000, msg
    assert re.search(match, msg), msg
    return msg


def _edit(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _edit_unet(root: Path, **changes) -> None:
    _edit(root / "unet" / "config.json", **changes)


def _edit_scheduler(root: Path, **changes) -> None:
    _edit(root / "scheduler" / "scheduler_config.json", **changes)


def _edit_weights(root: Path, edit) -> None:
    state = load_file(root / WEIGHTS)
    edit(state)
    save_file(state, root / WEIGHTS)


def test_the_untouched_copy_loads(model_dir):
    assert load(model_dir).checkpoint_config["family"] == "diffusers"


# --- files that are not regular files, or not weights -----------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", [WEIGHTS, "unet/config.json", "scheduler/scheduler_config.json"])
def test_fifo_files_are_refused_without_blocking(model_dir, name):
    (model_dir / name).unlink()
    os.mkfifo(model_dir / name)
    _load_fails(model_dir, f"{name}: is a FIFO")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("name", [WEIGHTS, "unet/config.json"])
def test_symlinks_to_devices_are_refused(model_dir, name):
    (model_dir / name).unlink()
    (model_dir / name).symlink_to("/dev/zero")
    _load_fails(model_dir, "is a character device")


def test_garbage_weights_are_refused(model_dir):
    (model_dir / WEIGHTS).write_bytes(os.urandom(4096))
    _load_fails(model_dir, "not a valid safetensors file")


def test_pickled_weights_are_never_read(model_dir):
    torch.save(load_file(model_dir / WEIGHTS), model_dir / "unet" / "diffusion_pytorch_model.bin")
    (model_dir / WEIGHTS).unlink()
    _load_fails(model_dir, "no .safetensors weights named diffusion_pytorch_model.safetensors .*does not unpickle")


def test_huge_config_file_is_refused(model_dir):
    (model_dir / "unet" / "config.json").write_text(" " * (2**20 + 1) + "{}")
    _load_fails(model_dir, "config.json: .*bytes, more than the 1048576")


# --- configs that are wrong, absurd or ask for what mimicfast does not do ---------------------------------------


@pytest.mark.parametrize(("change", "match"), [
    ({"layers_per_block": "x"}, r"layers_per_block must be an integer in \[1, 32\], got 'x'"),
    ({"block_out_channels": [40000, 80000]}, r"block_out_channels\[0\] must be an integer in \[1, 4096\], got 40000"),
    ({"in_channels": -3}, r"in_channels must be an integer in \[1, 64\], got -3"),
    ({"sample_size": 10**9}, "sample_size must be an integer in"),
    ({"sample_size": [8, 16]}, r"only square diffusers UNets are supported, got sample_size \[8, 16\]"),
    ({"foo": 1}, "unknown UNet2DModel config key 'foo'"),
    ({"down_block_types": ["DownBlock2D"]}, "block lists of different lengths"),
    ({"norm_num_groups": 3}, "block width 8 is not a multiple of the 3 normalisation groups"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type must be one of positional, got 'fourier'"),
    ({"num_class_embeds": 10}, "num_class_embeds 10: class-conditional diffusers UNets are not supported"),
    ({"_class_name": "UNet2DConditionModel"}, "_class_name 'UNet2DConditionModel': mimicfast supports UNet2DModel"),
    ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}, "down_block_types\\[1\\] must be one of"),
    ({"dropout": float("nan")}, r"dropout must be a number in \[0, 1\), got nan"),
])
def test_bad_unet_configs_are_one_line(model_dir, change, match):
    _edit_unet(model_dir, **change)
    _load_fails(model_dir, f"unet/config.json: {match}")


@pytest.mark.parametrize(("change", "match"), [
    ({"num_train_timesteps": 10**9}, r"num_train_timesteps must be an integer in \[1, 100000\], got 1000000000"),
    ({"beta_schedule": "nope"}, "beta_schedule must be one of"),
    ({"beta_start": 2.0, "beta_end": 3.0}, r"beta_start must be a number in \(0, 1\), got 2.0"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas must be a list of num_train_timesteps"),
    ({"prediction_type": "noise"}, "prediction_type must be one of epsilon, v_prediction, sample"),
    ({"rescale_betas_zero_snr": True}, r"the training betas must lie in \(0, 1\)"),
])
def test_bad_scheduler_configs_are_one_line(model_dir, change, match):
    _edit_scheduler(model_dir, **change)
    _load_fails(model_dir, f"scheduler_config.json: {match}")


def test_a_config_that_is_not_an_object_is_refused(model_dir):
    (model_dir / "scheduler" / "scheduler_config.json").write_text("[1, 2]")
    _load_fails(model_dir, "a scheduler config must be a JSON object, got list")


def test_sampler_settings_of_other_schedulers_are_ignored(model_dir):
    _edit_scheduler(model_dir, _class_name="DDIMScheduler", set_alpha_to_one=False, clip_sample=False)
    assert load(model_dir).betas is None


# --- weights that do not fit the config -------------------------------------------------------------------------


def test_missing_weights_are_an_error_not_random(model_dir):
    _edit_weights(model_dir, lambda sd: sd.pop("conv_in.bias"))
    _load_fails(model_dir, r"weights do not match .*config.json: 1 missing keys \(conv_in.bias\)")


def test_wrongly_shaped_and_extra_weights_are_refused(model_dir):
    def edit(sd):
        sd["conv_in.bias"] = torch.zeros(3)
        sd["extra.weight"] = torch.zeros(1)

    _edit_weights(model_dir, edit)
    _load_fails(model_dir, r"1 unexpected keys \(extra.weight\); 1 wrongly shaped keys \(conv_in.bias: file \[3\]")


@pytest.mark.parametrize("bad", ["nan", "int64"])
def test_unusable_weights_are_refused(model_dir, bad):
    def edit(sd):
        w = sd["conv_in.weight"]
        sd["conv_in.weight"] = w.fill_(float("nan")) if bad == "nan" else w.long()

    _edit_weights(model_dir, edit)
    _load_fails(model_dir, "weight 'conv_in.weight' " + ("has .* non-finite values" if bad == "nan" else "has dtype int64"))


def test_weights_saved_before_the_attention_rename_still_load(model_dir, saved):
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def rename(sd):
        for key in [k for k in sd if ".attentions." in k]:
            for new, old in old_names.items():
                if f".{new}." in key:
                    sd[key.replace(f".{new}.", f".{old}.")] = sd.pop(key)

    _edit_weights(model_dir, rename)
    assert any(".query." in k for k in load_file(model_dir / WEIGHTS))
    expected, got = load(saved).state_dict(), load(model_dir).state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
