"""Training loops: a couple of steps on tiny random data, checkpoints, exact resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mimicfast.errors import InputError
from mimicfast.train.classifier import ClassifierConfig, FashionCNN, augment, train_classifier
from mimicfast.train.common import batch_indices, load_checkpoint
from mimicfast.train.data import read_idx, to_tensor32
from mimicfast.train.ddpm import DDPMConfig, train_ddpm


def _tiny_images(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_classifier_two_steps_resume_matches_uninterrupted(tmp_path):
    x, y = _tiny_images(), torch.arange(16) % 10
    cfg = ClassifierConfig(width=8, steps=2, batch_size=8, checkpoint_every=1)
    straight = train_classifier(cfg, tmp_path / "a", export=tmp_path / "c.safetensors", data=(x, y), test_data=(x, y))
    assert straight["step"] == 2 and 0.0 <= straight["test_accuracy"] <= 1.0
    partial = train_classifier(cfg, tmp_path / "b", data=(x, y), test_data=(x, y), until=1)
    assert partial["step"] == 1 and load_checkpoint(tmp_path / "b" / "classifier.pt")["step"] == 1
    train_classifier(cfg, tmp_path / "b", data=(x, y), test_data=(x, y))
    _assert_same_state(load_checkpoint(tmp_path / "a" / "classifier.pt")["model"],
                       load_checkpoint(tmp_path / "b" / "classifier.pt")["model"])
    model = FashionCNN(width=8)
    model.load_state_dict(load_file(tmp_path / "c.safetensors"))
    assert json.loads((tmp_path / "c.json").read_text())["width"] == 8


def test_ddpm_two_steps_resume_matches_uninterrupted(tmp_path):
    x = _tiny_images(8)
    cfg = DDPMConfig(steps=2, batch_size=4, checkpoint_every=1, bf16=False)
    out = train_ddpm(cfg, tmp_path / "a", export=tmp_path / "u.safetensors", data=x)
    assert out["step"] == 2 and np.isfinite(out["loss"])
    assert train_ddpm(cfg, tmp_path / "b", data=x, until=1)["step"] == 1
    assert not (tmp_path / "b.safetensors").exists()
    train_ddpm(cfg, tmp_path / "b", data=x)
    a, b = load_checkpoint(tmp_path / "a" / "ddpm.pt"), load_checkpoint(tmp_path / "b" / "ddpm.pt")
    _assert_same_state(a["ema"], b["ema"])
    _assert_same_state(a["model"], b["model"])
    # The export is the EMA in the guided-diffusion layout, loadable by the package loader.
    from mimicfast.models.loader import load_guided_diffusion

    cfg_json = json.loads((tmp_path / "u.json").read_text())
    assert cfg_json.pop("family") == "guided_diffusion"
    unet = load_guided_diffusion(tmp_path / "u.safetensors", cfg_json)
    _assert_same_state(unet.state_dict(), a["ema"])


def test_batch_order_is_a_function_of_seed_and_step():
    first = batch_indices(10, 3, seed=0, step=4)
    assert torch.equal(first, batch_indices(10, 3, seed=0, step=4))
    epoch = torch.cat([batch_indices(9, 3, seed=5, step=s) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(9))  # an epoch visits every example once


def test_augment_keeps_shape_and_mass():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0  # content away from the border survives any 2-pixel shift
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum((1, 2, 3)), x.sum((1, 2, 3)))


def test_idx_reader_roundtrip_and_errors(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = tmp_path / "img.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    np.testing.assert_array_equal(read_idx(path), images)
    x = to_tensor32(images)
    assert x.shape == (2, 1, 32, 32) and x[:, :, :2].abs().sum() == 0
    assert x[0, 0, 2, 3] == pytest.approx(1 / 255)
    (tmp_path / "bad.idx").write_bytes(bytes([1, 2, 3, 4, 5]))
    with pytest.raises(InputError, match="not a uint8 idx"):
        read_idx(tmp_path / "bad.idx")


def test_train_cli_on_fashion_mnist(tmp_path, capsys):
    from mimicfast.cli import main
    from mimicfast.train.data import DEFAULT_DIR

    if not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed")
    argv = ["train", "classifier", "--steps", "2", "--batch-size", "8", "--width", "8",
            "--run-dir", str(tmp_path / "run"), "--export", str(tmp_path / "c.safetensors"), "--threads", "1"]
    assert main([*argv, "--until", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 1
    assert main(argv) == 0  # resumes at step 1, finishes, scores the 10,000 test images and exports
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 2 and 0.0 <= out["test_accuracy"] <= 1.0
    assert (tmp_path / "c.safetensors").is_file()


def test_batch_order_comes_from_the_seeding_scheme():
    from mimicfast.seeding import generator
    from mimicfast.train.common import BATCH_ORDER

    perm = torch.randperm(10, generator=generator(7, BATCH_ORDER, 1))  # epoch 1 of 3-example batches
    assert torch.equal(batch_indices(10, 3, seed=7, step=4), perm[3:6])


def _export_tiny_unet(tmp_path, x) -> str:
    """A UNet that differs from the seeded initialisation (one training step), exported as safetensors."""
    train_ddpm(DDPMConfig(steps=1, batch_size=4, bf16=False, lr=1e-2, warmup=1), tmp_path / "src",
               export=tmp_path / "init.safetensors", data=x)
    return str(tmp_path / "init.safetensors")


def test_ddpm_warm_start_loads_weights_into_model_and_ema(tmp_path):
    import hashlib

    x = _tiny_images(8)
    init = _export_tiny_unet(tmp_path, x)
    weights = load_file(init)
    # lr 0: the weights after a step are the starting weights, so the checkpoint shows what was loaded.
    cfg = DDPMConfig(steps=1, batch_size=4, bf16=False, lr=0.0, init=init)
    train_ddpm(cfg, tmp_path / "run", data=x)
    state = load_checkpoint(tmp_path / "run" / "ddpm.pt")
    _assert_same_state(state["model"], weights)
    _assert_same_state(state["ema"], weights)
    assert state["config"]["init"] == init
    assert state["init_sha256"] == hashlib.sha256(Path(init).read_bytes()).hexdigest()
    cold = train_ddpm(DDPMConfig(steps=1, batch_size=4, bf16=False, lr=0.0), tmp_path / "cold", data=x)
    assert cold["step"] == 1
    assert not torch.equal(load_checkpoint(tmp_path / "cold" / "ddpm.pt")["model"]["out.2.weight"],
                           weights["out.2.weight"])


def test_ddpm_warm_start_resume_is_exact_and_refuses_other_weights(tmp_path):
    from mimicfast.errors import CheckpointError

    x = _tiny_images(8)
    init = _export_tiny_unet(tmp_path, x)
    cfg = DDPMConfig(steps=3, batch_size=4, checkpoint_every=1, bf16=False, init=init, cosine_lr=True, warmup=1)
    train_ddpm(cfg, tmp_path / "a", data=x)
    train_ddpm(cfg, tmp_path / "b", data=x, until=2)
    train_ddpm(cfg, tmp_path / "b", data=x)
    a, b = load_checkpoint(tmp_path / "a" / "ddpm.pt"), load_checkpoint(tmp_path / "b" / "ddpm.pt")
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["ema"], b["ema"])
    with pytest.raises(CheckpointError, match="started from other weights"):
        train_ddpm(DDPMConfig(steps=4, batch_size=4, bf16=False), tmp_path / "b", data=x)


def test_ddpm_init_of_another_architecture_is_refused_before_writing(tmp_path):
    from mimicfast.errors import CheckpointError

    classifier = tmp_path / "c.safetensors"
    from mimicfast.train.common import export_safetensors

    export_safetensors(FashionCNN(width=8).state_dict(), classifier)
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        train_ddpm(DDPMConfig(steps=1, batch_size=4, init=str(classifier)), tmp_path / "run", data=_tiny_images(8))
    assert not (tmp_path / "run").exists()


def test_cosine_learning_rate_warms_up_then_decays_to_zero():
    from mimicfast.train.ddpm import learning_rate

    cfg = DDPMConfig(steps=110, lr=1.0, warmup=10, cosine_lr=True)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 60) == pytest.approx(0.5)
    assert learning_rate(cfg, 109) < 1e-3
    assert learning_rate(DDPMConfig(steps=110, lr=1.0, warmup=10), 109) == 1.0


def test_export_writes_through_the_atomic_writer(tmp_path, monkeypatch):
    from mimicfast.train.common import export_safetensors

    def refuse(*args, **kwargs):
        raise AssertionError("a non-atomic write")

    monkeypatch.setattr(Path, "write_text", refuse)
    export_safetensors({"w": torch.ones(2)}, tmp_path / "m.safetensors", config={"width": 1})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"width": 1}
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], torch.ones(2))


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    x = _tiny_images(8)
    train_ddpm(DDPMConfig(steps=1, batch_size=4, bf16=False), tmp_path / "run", data=x)
    train_classifier(ClassifierConfig(width=8, steps=1, batch_size=4), tmp_path / "c", data=(x, torch.arange(8)),
                     test_data=(x, torch.arange(8)))
    assert capsys.readouterr().err == ""
