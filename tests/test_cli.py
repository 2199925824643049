"""`mimicfast purify` end to end on a real image with a guided-diffusion-format checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mimicfast.cli import main

ARGS = ["--config", "gd-small-test", "--preset", "released", "--steps", "4"]


@pytest.fixture(scope="module")
def checkpoint(parity_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "gd_small.pt"
    shutil.copy(parity_dir / "gd_unet_small_state_dict.pt", path)
    return path


@pytest.fixture()
def image(images_dir, tmp_path) -> Path:
    path = tmp_path / "in" / "cat.png"
    path.parent.mkdir()
    shutil.copy(images_dir / "cifar10_00_3.png", path)
    return path


def test_purify_png_and_npy(checkpoint, image, tmp_path, capsys) -> None:
    before = image.read_bytes()
    batch = tmp_path / "in" / "batch.npy"
    np.save(batch, np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32))
    out = tmp_path / "out"
    assert main(["purify", str(image), str(batch), "-o", str(out), "--checkpoint", str(checkpoint), *ARGS]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["batch_0000_purified.png", "batch_0001_purified.png", "cat_purified.png", "purified.pt"]
    result = torch.load(out / "purified.pt", weights_only=True)
    assert result["images"].shape == (3, 3, 32, 32) and result["names"][0] == "cat"
    assert float(result["images"].min()) >= 0 and float(result["images"].max()) <= 1
    assert image.read_bytes() == before


def test_autocast_bf16_on_the_cpu(checkpoint, image, tmp_path) -> None:
    """--autocast bf16 runs the fast path on the CPU too: close to the exact run, never taken from its chunks."""
    argv = ["purify", str(image), "--checkpoint", str(checkpoint), *ARGS]
    assert main([*argv, "-o", str(tmp_path / "exact")]) == 0
    assert main([*argv, "-o", str(tmp_path / "bf16"), "--autocast", "bf16"]) == 0
    exact, bf16 = (torch.load(tmp_path / d / "purified.pt", weights_only=True)["images"] for d in ("exact", "bf16"))
    assert not torch.equal(exact, bf16) and (exact - bf16).abs().mean() < 0.02, (exact - bf16).abs().mean()


def test_interrupted_run_resumes(checkpoint, image, tmp_path, monkeypatch) -> None:
    """An interrupted run leaves its finished chunks; the rerun purifies only the rest, with the same seeds."""
    import mimicfast.api

    batch = tmp_path / "in" / "batch.npy"
    np.save(batch, np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32))
    argv = ["purify", str(image), str(batch), "--checkpoint", str(checkpoint), "--batch-size", "1", *ARGS]
    real_forward, calls, interrupt = mimicfast.api.Purifier.forward, [], [True]

    def flaky_forward(self, x, seed=None):
        calls.append(seed)
        if interrupt[0] and len(calls) == 2:
            raise KeyboardInterrupt
        return real_forward(self, x, seed)

    monkeypatch.setattr(mimicfast.api.Purifier, "forward", flaky_forward)
    assert main([*argv, "-o", str(tmp_path / "out")]) == 130
    assert not (tmp_path / "out" / "purified.pt").exists()
    calls.clear()
    interrupt[0] = False
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    assert calls == [[1], [2]]  # chunk 0 (seed 0) was not recomputed
    monkeypatch.setattr(mimicfast.api.Purifier, "forward", real_forward)
    assert main([*argv, "-o", str(tmp_path / "fresh")]) == 0
    resumed = torch.load(tmp_path / "out" / "purified.pt", weights_only=True)["images"]
    torch.testing.assert_close(resumed, torch.load(tmp_path / "fresh" / "purified.pt", weights_only=True)["images"])


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda d: d / "missing.png", "input not found"),
        (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "unsupported input type"),
        (lambda d: (d / "broken.png").write_bytes(b"\x89PNG garbage") and d / "broken.png", "not a readable image"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(checkpoint, tmp_path, capsys, make_bad, message) -> None:
    bad = make_bad(tmp_path)
    out = tmp_path / "out"
    assert main(["purify", str(bad), "-o", str(out), "--checkpoint", str(checkpoint), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_wrong_size_and_wrong_checkpoint(checkpoint, images_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    jpeg = images_dir / "imagenet_00_243.jpg"
    assert main(["purify", str(jpeg), "-o", str(out), "--checkpoint", str(checkpoint), *ARGS]) == 2
    assert "--resize" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["purify", str(jpeg), "-o", str(out), "--checkpoint", str(garbage), *ARGS]) == 2
    assert "garbage.pt" in capsys.readouterr().err
    assert not out.exists()


def test_pad_small_images(checkpoint, images_dir, tmp_path, capsys) -> None:
    """28x28 Fashion-MNIST images are zero-padded to the model's 32x32 with --pad (3 channels here: RGB of gray)."""
    small = images_dir / "fashionMNIST_00_9.png"
    out = tmp_path / "out"
    assert main(["purify", str(small), "-o", str(out), "--checkpoint", str(tmp_path / "no.pt"), *ARGS]) == 2
    assert "no.pt" in capsys.readouterr().err
    assert main(["purify", str(small), "-o", str(out), "--checkpoint", str(checkpoint), *ARGS]) == 2
    assert "--pad" in capsys.readouterr().err
    assert not out.exists()
    assert main(["purify", str(small), "-o", str(out), "--checkpoint", str(checkpoint), "--pad", *ARGS]) == 0
    assert torch.load(out / "purified.pt", weights_only=True)["images"].shape == (1, 3, 32, 32)


def test_never_overwrites_an_input(checkpoint, image, capsys) -> None:
    target = image.parent / "cat_purified.png"
    shutil.copy(image, target)
    before = target.read_bytes()
    assert (
        main(["purify", str(target), str(image), "-o", str(image.parent), "--checkpoint", str(checkpoint), *ARGS]) == 2
    )
    assert "would overwrite a file this command reads" in capsys.readouterr().err
    assert target.read_bytes() == before


def test_python_dash_m(checkpoint, image, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mimicfast", "purify", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout
