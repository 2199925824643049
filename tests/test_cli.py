"""`mimicfast purify` end to end on a real image with a guided-diffusion-format checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
    assert torch.load(out / "purified.pt", weights_only=True)["images"].shape == (1, 3, 28, 28)  # cropped back
    assert Image.open(out / "fashionMNIST_00_9_purified.png").size == (28, 28)
    kept = tmp_path / "kept"
    assert main(["purify", str(small), "-o", str(kept), "--checkpoint", str(checkpoint), "--pad", "--no-crop",
                 *ARGS]) == 0
    assert torch.load(kept / "purified.pt", weights_only=True)["images"].shape == (1, 3, 32, 32)
    padded = torch.load(kept / "purified.pt", weights_only=True)["images"][..., 2:30, 2:30]
    torch.testing.assert_close(torch.load(out / "purified.pt", weights_only=True)["images"], padded)


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


# ---------------------------------------------------------------------------------------------------------
# File safety: nothing read is overwritten or deleted, nothing is written on bad input, resume never mixes.


def _purify(*argv: object) -> int:
    return main(["purify", *(str(a) for a in argv)])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimicfast: error: ") and len(err.splitlines()) == 1, err
    return err


def _interrupt_after(monkeypatch, n_calls: int) -> list:
    """Make Purifier.forward raise KeyboardInterrupt once, on call ``n_calls + 1``; returns the list of seeds
    it is called with."""
    import mimicfast.api

    real_forward, calls, armed = mimicfast.api.Purifier.forward, [], [True]

    def forward(self, x, seed=None):
        calls.append(seed)
        if armed[0] and len(calls) == n_calls + 1:
            armed[0] = False
            raise KeyboardInterrupt
        return real_forward(self, x, seed)

    monkeypatch.setattr(mimicfast.api.Purifier, "forward", forward)
    return calls


def test_checkpoint_or_hard_linked_input_is_never_overwritten(checkpoint, image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "purified.pt"
    shutil.copy(checkpoint, inside)
    before = inside.read_bytes()
    assert _purify(image, "-o", out, "--checkpoint", inside, *ARGS) == 2
    assert "would overwrite a file this command reads" in _one_line_error(capsys)
    assert inside.read_bytes() == before
    batch = tmp_path / "in" / "b.pt"
    torch.save(torch.rand(1, 3, 32, 32), batch)
    inside.unlink()
    os.link(batch, inside)
    before = batch.read_bytes()
    assert _purify(batch, "-o", out, "--checkpoint", checkpoint, *ARGS) == 2
    assert f"({batch})" in _one_line_error(capsys)
    assert batch.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["purified.pt"]


def test_files_inside_partial_are_never_deleted(checkpoint, image, tmp_path, capsys) -> None:
    """Inputs, the checkpoint and foreign files inside OUT/.partial survive the final cleanup."""
    partial = tmp_path / "out" / ".partial"
    partial.mkdir(parents=True)
    moved_image, moved_ckpt, foreign = partial / "cat.png", partial / "model.pt", partial / "notes.txt"
    shutil.copy(image, moved_image)
    shutil.copy(checkpoint, moved_ckpt)
    foreign.write_text("mine")
    assert _purify(moved_image, "-o", tmp_path / "out", "--checkpoint", moved_ckpt, *ARGS) == 0
    assert sorted(p.name for p in partial.iterdir()) == ["cat.png", "model.pt", "notes.txt"]
    assert "kept" in capsys.readouterr().err
    assert (tmp_path / "out" / "cat_purified.png").is_file()


def test_damaged_chunk_is_recomputed(checkpoint, image, tmp_path, monkeypatch, capsys) -> None:
    """A chunk cut short (a kill or a full disk mid-save) is detected on resume and recomputed, not fatal."""
    argv = [image, image.parent, "--checkpoint", checkpoint, "--batch-size", "1", *ARGS]
    batch = image.parent / "b.npy"
    np.save(batch, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    calls = _interrupt_after(monkeypatch, 1)
    out = tmp_path / "out"
    assert _purify(image, batch, "-o", out, *argv[2:]) == 130
    (chunk,) = (out / ".partial").iterdir()
    chunk.write_bytes(chunk.read_bytes()[:100])
    calls.clear()
    assert _purify(image, batch, "-o", out, *argv[2:]) == 0
    assert len(calls) == 2 and "recomputing" in capsys.readouterr().err
    monkeypatch.undo()
    assert _purify(image, batch, "-o", tmp_path / "fresh", *argv[2:]) == 0
    resumed, fresh = (torch.load(d / "purified.pt", weights_only=True)["images"] for d in (out, tmp_path / "fresh"))
    assert torch.equal(resumed, fresh)


def test_replaced_checkpoint_is_not_mixed_with_old_chunks(checkpoint, image, tmp_path, monkeypatch) -> None:
    """The resume key covers the weights' content: new weights at the same path recompute every chunk."""
    ckpt = tmp_path / "model.pt"
    shutil.copy(checkpoint, ckpt)
    batch = image.parent / "b.npy"
    np.save(batch, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    argv = [image, batch, "-o", tmp_path / "out", "--checkpoint", ckpt, "--batch-size", "1", *ARGS]
    calls = _interrupt_after(monkeypatch, 1)
    assert _purify(*argv) == 130
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, ckpt)
    calls.clear()
    assert _purify(*argv) == 0
    assert calls == [[0], [1]]  # chunk 0 was recomputed with the new weights


@pytest.mark.parametrize(
    "extra",
    [
        ["--steps", "0"], ["--steps", "5000"], ["--steps", "-3"], ["--seed", str(2**64)], ["--seed", "-1"],
        ["--batch-size", "0"], ["--device", "nope"], ["--device", "meta"], ["--device", "cuda:99"],
        ["--preset", "nope"],
    ],
)
def test_bad_arguments_write_nothing(checkpoint, image, tmp_path, capsys, extra) -> None:
    out = tmp_path / "out"
    assert _purify(image, "-o", out, "--checkpoint", checkpoint, *ARGS, *extra) == 2
    _one_line_error(capsys)
    assert not out.exists()


def test_bad_input_after_a_good_one_writes_nothing(checkpoint, image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    for bad_array in (np.full((1, 3, 32, 32), np.nan, np.float32), np.zeros((0, 3, 32, 32), np.float32)):
        bad = tmp_path / "bad.npy"
        np.save(bad, bad_array)
        assert _purify(image, bad, "-o", out, "--checkpoint", checkpoint, "--batch-size", "1", *ARGS) == 2
        assert "bad.npy" in _one_line_error(capsys)
        assert not out.exists()


def test_unwritable_output_fails_before_the_work(checkpoint, image, tmp_path, capsys, monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _purify(image, "-o", afile / "sub", "--checkpoint", checkpoint, *ARGS) == 2
    assert "is not a folder" in _one_line_error(capsys)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert _purify(image, "-o", tmp_path / "ro", "--checkpoint", checkpoint, *ARGS) == 2
    assert "not writable" in _one_line_error(capsys) or "read-only" in capsys.readouterr().err
    assert not (tmp_path / "ro").exists()


def test_long_name_folder_input_and_singular_summary(checkpoint, images_dir, tmp_path, capsys) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    long_name = "x" * 250
    shutil.copy(images_dir / "cifar10_00_3.png", folder / f"{long_name}.png")
    out = tmp_path / "out"
    assert _purify(folder, "-o", out, "--checkpoint", checkpoint, *ARGS) == 0
    assert f"wrote 1 purified image and purified.pt to {out}" in capsys.readouterr().out
    (png,) = out.glob("*.png")
    assert len(png.name) <= 255 and png.name.endswith("_purified.png")
    assert torch.load(out / "purified.pt", weights_only=True)["names"] == [long_name]


def test_default_steps_follow_the_paper_per_resolution(checkpoint, image, tmp_path) -> None:
    from mimicfast.cli import build_parser
    from mimicfast.purify_cli import plan

    args = build_parser().parse_args(
        ["purify", str(image), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--config", "gd-small-test"]
    )
    assert plan(args).preset.steps == 100
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_checkpoint_defaults_to_the_bundled_model_from_any_folder(tmp_path, monkeypatch) -> None:
    """Without --checkpoint the bundled model is found from the package, wherever the command runs."""
    from mimicfast.cli import build_parser
    from mimicfast.default import UNET_PATH
    from mimicfast.purify_cli import plan

    picture = tmp_path / "grey.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(picture)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = plan(build_parser().parse_args(["purify", str(picture), "-o", "out", "--pad"]))
    assert job.preset.steps == 100 and job.images.shape == (1, 1, 32, 32)
    assert UNET_PATH.is_absolute() and not (elsewhere / "out").exists()


def test_help_lists_every_accepted_layout(capsys) -> None:
    from mimicfast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["purify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for layout in ("[N, C, H, W]", "[C, H, W]", "[N, H, W]", "[H, W]"):
        assert layout in text
    assert "--crop" in text and "bundled" in text


def test_one_grey_hw_npy_is_one_image(tmp_path, capsys) -> None:
    hw = tmp_path / "one.npy"
    np.save(hw, np.full((28, 28), 0.5, np.float32))
    assert _purify(hw, "-o", tmp_path / "out", "--pad", "--steps", "2") == 0
    assert "wrote 1 purified image" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one_0000_purified.png", "purified.pt"]


def test_a_model_that_fails_on_its_first_chunk_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    """A model returning the wrong shape fails with one line naming the denoiser's output; no OUTDIR/.partial."""
    import mimicfast.sampling.denoisers as denoisers

    picture = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(picture)
    real = denoisers.EpsTimestepDenoiser.__init__

    def broken_model(self, model, betas=None):
        real(self, model, betas)
        self.model.forward = lambda x, t: x[:, :, :8]

    monkeypatch.setattr(denoisers.EpsTimestepDenoiser, "__init__", broken_model)
    assert _purify(picture, "-o", tmp_path / "out", "--steps", "2") == 2
    assert "denoiser's output" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_colour_input_for_a_grey_model_needs_grey(tmp_path, capsys) -> None:
    from PIL import Image

    import mimicfast

    unet = Path(mimicfast.__file__).parent / "weights" / "fmnist_unet.safetensors"
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    picture = tmp_path / "red.png"
    Image.fromarray(rgb).save(picture)
    argv = [picture, "--checkpoint", unet, "--steps", "2"]
    assert _purify(*argv, "-o", tmp_path / "out") == 2
    assert "pass --grey" in _one_line_error(capsys)
    assert _purify(*argv, "-o", tmp_path / "out", "--grey") == 0


def test_convert_never_overwrites_what_it_reads(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    first = tmp_path / "m"
    assert main(["convert", str(checkpoint), str(first), "--config", "gd-small-test"]) == 0
    capsys.readouterr()
    config = (tmp_path / "m.json").read_bytes()
    assert main(["convert", str(tmp_path / "m.safetensors"), str(first)]) == 2
    assert "would overwrite" in _one_line_error(capsys)
    assert (tmp_path / "m.json").read_bytes() == config
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["convert", str(checkpoint), str(afile / "sub"), "--config", "gd-small-test"]) == 2
    assert "is not a folder" in _one_line_error(capsys)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert main(["convert", str(checkpoint), str(tmp_path / "ro" / "m"), "--config", "gd-small-test"]) == 2
    _one_line_error(capsys)
    assert not (tmp_path / "ro").exists()


# ---------------------------------------------------------------------------------------------------------
# For people: --version, fast help in plain words.


def test_version(capsys) -> None:
    import mimicfast

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"mimicfast {mimicfast.__version__}"


def test_help_is_fast_and_imports_no_torch() -> None:
    """Building every command's parser imports neither torch nor PIL (torch alone takes over a second)."""
    code = (
        "import sys, mimicfast.cli; mimicfast.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'PIL', 'numpy') if m in sys.modules]; assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_help_is_plain_words() -> None:
    """No reST markup (``literal``, :func:) in any command's help."""
    from mimicfast.cli import SUBCOMMAND_MODULES, build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert len(commands) >= len(SUBCOMMAND_MODULES)
    for name, sub in [("mimicfast", parser), *commands.items()]:
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, name


def test_what_the_readme_creates_is_ignored_by_git() -> None:
    """The virtualenv, the demo's folder and purify's out/ that the README's commands create stay out of git."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [".venv/bin/python", "mimicfast-demo/demo.json", "demo-check/demo.json", "out/purified.pt"]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True, text=True)
    assert proc.stdout.split() == paths


def test_chunk_with_values_outside_the_unit_range_is_recomputed(checkpoint, image, tmp_path, monkeypatch, capsys):
    argv = [image, "-o", tmp_path / "out", "--checkpoint", checkpoint, *ARGS]
    calls = _interrupt_after(monkeypatch, 1)
    batch = image.parent / "b.npy"
    np.save(batch, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    assert _purify(batch, *argv, "--batch-size", "1") == 130
    (chunk,) = (tmp_path / "out" / ".partial").iterdir()
    saved = torch.load(chunk, weights_only=True)
    torch.save({**saved, "images": saved["images"] + 2}, chunk)
    calls.clear()
    assert _purify(batch, *argv, "--batch-size", "1") == 0
    assert len(calls) == 2 and "[0, 1]" in capsys.readouterr().err
