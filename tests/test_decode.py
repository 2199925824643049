"""mimicfast.decode: bounded safe reads, header checks before decoding, the accepted layouts, and a bounded-time
fuzz of hostile input files."""

from __future__ import annotations

import io
import os
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimicfast.decode import (
    MAX_PIXELS,
    Geometry,
    expand_inputs,
    open_input,
    read_inputs,
)
from mimicfast.errors import InputError

GREY32 = Geometry(channels=1, size=32)
RGB32 = Geometry(channels=3, size=32)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels but holds almost no data."""
    raw = io.BytesIO()
    Image.new("L", (4, 4)).save(raw, format="PNG")
    data = bytearray(raw.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


# ------------------------------------------------------------------------------------------ safe reads


def test_open_input_refuses_fifo_device_and_folder_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "in.pt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.npy"
    zero.symlink_to("/dev/zero")
    start = time.monotonic()
    for path, what in ((fifo, "FIFO"), (zero, "character device"), (tmp_path, "directory")):
        with pytest.raises(InputError, match=what):
            open_input(path)
    assert time.monotonic() - start < 5
    big = tmp_path / "big.npy"
    big.write_bytes(b"x" * 100)
    with pytest.raises(InputError, match="more than the 99"):
        open_input(big, max_bytes=99)


@pytest.mark.parametrize("name", ["fifo.png", "fifo.npy", "fifo.pt"])
def test_inputs_that_are_fifos_fail_at_once(tmp_path, name) -> None:
    os.mkfifo(tmp_path / name)
    with pytest.raises(InputError, match="FIFO"):
        read_inputs([tmp_path / name], GREY32)


# ------------------------------------------------------------------------------------------ pictures


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path) -> None:
    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    x, names = read_inputs([_png(tmp_path / "deep.png", values)], GREY32)
    assert names == ["deep"] and x.shape == (1, 1, 32, 32)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(values.astype(np.float32) / 65535))
    assert float((x == 1).float().mean()) == 0.0


def test_picture_size_is_checked_from_the_header_before_decoding(tmp_path) -> None:
    huge = _png_claiming(tmp_path / "huge.png", 30000, 30000)
    with pytest.raises(InputError, match="more than the"):
        read_inputs([huge], Geometry(channels=1, size=32, resize=True))
    with pytest.raises(InputError, match="12000x12000 pixels is more than"):
        read_inputs([_png_claiming(tmp_path / "big.png", 12000, 12000)], GREY32)
    with pytest.raises(InputError, match="takes 32x32 images, got 4000x4000"):  # refused before decoding
        read_inputs([_png_claiming(tmp_path / "wide.png", 4000, 4000)], GREY32)
    with pytest.raises(InputError, match="image size 20000"):
        read_inputs([_png(tmp_path / "ok.png", np.zeros((32, 32), np.uint8))], Geometry(1, 20000, resize=True))
    assert MAX_PIXELS < 12000 * 12000


def test_colour_for_a_grey_model_needs_grey_flag(tmp_path) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    colour = _png(tmp_path / "colour.png", rgb)
    with pytest.raises(InputError, match="pass --grey"):
        read_inputs([colour], Geometry(1, 32, options=frozenset({"--grey"})))
    with pytest.raises(InputError, match="convert them to grey first") as caught:  # a command without --grey
        read_inputs([colour], GREY32)
    assert "--grey" not in str(caught.value)
    x, _ = read_inputs([colour], Geometry(1, 32, grey=True))
    torch.testing.assert_close(x, torch.full((1, 1, 32, 32), 0.299 * 200 / 255))
    grey_as_rgb = _png(tmp_path / "greyish.png", np.full((32, 32, 3), 7, np.uint8))
    assert read_inputs([grey_as_rgb], GREY32)[0].shape == (1, 1, 32, 32)  # equal channels lose nothing
    assert read_inputs([_png(tmp_path / "g.png", np.zeros((32, 32), np.uint8))], RGB32)[0].shape == (1, 3, 32, 32)


def test_folders_expand_to_the_images_inside(tmp_path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        _png(folder / name, np.zeros((32, 32), np.uint8))
    (folder / "notes.txt").write_text("skipped")
    (folder / ".hidden.png").write_bytes(b"skipped")
    assert [p.name for p in expand_inputs([folder])] == ["a.png", "b.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no"):
        expand_inputs([empty])
    with pytest.raises(InputError, match="input not found"):
        expand_inputs([tmp_path / "missing.png"])


# ------------------------------------------------------------------------------------------ batches


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=False)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _npy(p, np.zeros((1, 1, 32, 32), "datetime64[s]")), "dtype"),
        (lambda p: _npy(p, np.full((1, 1, 32, 32), "a")), "dtype"),
        (lambda p: _npy(p, np.zeros((1, 1, 32, 32), "V4")), "dtype"),
        (lambda p: _npy(p, np.zeros((1, 1, 32, 32), np.int64)), "dtype"),
        (lambda p: _npy(p, np.zeros((0, 1, 32, 32), np.float32)), "no images"),
        (lambda p: _npy(p, np.full((2, 1, 32, 32), np.nan, np.float32)), "NaN"),
        (lambda p: _npy(p, np.full((2, 1, 32, 32), 2.0, np.float32)), r"\[0, 1\]"),
        (lambda p: p.write_bytes(b""), "not a .npy"),
    ],
)
def test_bad_npy_is_one_clear_error(tmp_path, make, message) -> None:
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(InputError, match=message):
        read_inputs([path], GREY32)


def test_npz_renamed_npy_and_huge_header_shape(tmp_path) -> None:
    npz = tmp_path / "renamed.npy"
    with open(npz, "wb") as f:
        np.savez(f, images=np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(InputError, match="not a .npy"):
        read_inputs([npz], GREY32)
    huge = tmp_path / "huge.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 32, 32), np.float32))
    header["shape"] = (10**12, 1, 32, 32)
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(InputError, match="header says shape"):
        read_inputs([huge], GREY32)


def test_npy_layouts_read_correctly(tmp_path) -> None:
    values = np.random.default_rng(0).random((2, 1, 32, 32))
    for name, array in (("f", np.asfortranarray(values)), ("be", values.astype(">f4")), ("u8", values * 0)):
        x, names = read_inputs([_npy(tmp_path / f"{name}.npy", array)], GREY32)
        assert names == [f"{name}_0000", f"{name}_0001"]
        torch.testing.assert_close(x, torch.from_numpy(np.asarray(array, np.float32)))


def test_pt_batches_requires_grad_meta_sparse(tmp_path) -> None:
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    torch.save(x, tmp_path / "grad.pt")
    torch.testing.assert_close(read_inputs([tmp_path / "grad.pt"], GREY32)[0], x.detach())
    torch.save(torch.empty(2, 1, 32, 32, device="meta"), tmp_path / "meta.pt")
    with pytest.raises(InputError, match="meta"):
        read_inputs([tmp_path / "meta.pt"], GREY32)
    torch.save(torch.rand(2, 1, 32, 32).to_sparse(), tmp_path / "sparse.pt")
    with pytest.raises(InputError, match="sparse"):
        read_inputs([tmp_path / "sparse.pt"], GREY32)
    torch.save({"images": torch.rand(1, 3, 32, 32)}, tmp_path / "colour.pt")
    with pytest.raises(InputError, match="grey"):
        read_inputs([tmp_path / "colour.pt"], GREY32)


def test_names_that_collide_are_refused(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [_png(tmp_path / d / "x.png", np.zeros((32, 32), np.uint8)) for d in ("a", "b")]
    with pytest.raises(InputError, match="same image name 'x'"):
        read_inputs(paths, GREY32)


# ------------------------------------------------------------------------------------------ outputs


def _hostile_files(rng: random.Random, folder: Path, count: int) -> list[Path]:
    """Random bytes, truncations and byte flips of valid PNG, JPEG, .npy and .pt files."""
    seeds = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, format=fmt)
        seeds[suffix] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 1, 32, 32), np.float32))
    seeds[".npy"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(torch.zeros(1, 1, 32, 32), buf)
    seeds[".pt"] = buf.getvalue()
    files = []
    for i in range(count):
        suffix = rng.choice(sorted(seeds))
        data = bytearray(seeds[rng.choice(sorted(seeds))] if rng.random() < 0.2 else seeds[suffix])
        kind = rng.randrange(3)
        if kind == 0:
            data = bytearray(rng.randbytes(rng.randrange(0, 200)))
        elif kind == 1:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        path = folder / f"f{i}{suffix}"
        path.write_bytes(bytes(data))
        files.append(path)
    return files


def test_fuzz_hostile_inputs_give_input_errors_only(tmp_path) -> None:
    """Every mangled file either reads as a valid batch or raises InputError; nothing else escapes, nothing hangs."""
    rng = random.Random(1234)
    deadline = time.monotonic() + 4.0
    checked = 0
    while time.monotonic() < deadline:
        for path in _hostile_files(rng, tmp_path, 20):
            for geometry in (GREY32, RGB32, Geometry(3, 32, resize=True)):
                try:
                    x, names = read_inputs([path], geometry)
                except InputError:
                    continue
                assert x.dtype == torch.float32 and x.shape[1:] == (geometry.channels, 32, 32), path
                assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1
                assert len(names) == x.shape[0]
            checked += 1
            path.unlink()
    assert checked >= 20


def test_npy_with_a_mangled_header_is_an_input_error(tmp_path) -> None:
    """numpy parses the header with ast/tokenize; an unterminated tuple raises tokenize's own error there."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 1, 32, 32), np.float32))
    data = bytearray(buf.getvalue())
    start = data.index(b"(")
    data[start + 1 : start + 3] = b"(("
    path = tmp_path / "mangled.npy"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a .npy array file"):
        read_inputs([path], GREY32)


def test_hints_name_only_the_options_the_command_has(tmp_path) -> None:
    small = _png(tmp_path / "small.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(InputError) as caught:
        read_inputs([small], GREY32)
    assert "--" not in str(caught.value)
    with pytest.raises(InputError, match=r"\(pass --pad\)"):
        read_inputs([small], Geometry(1, 32, options=frozenset({"--pad"})))


def test_channel_count_is_spelled_right(tmp_path) -> None:
    batch = _npy(tmp_path / "two.npy", np.zeros((1, 2, 32, 32), np.uint8))
    with pytest.raises(InputError, match="takes 1 channel, got 2"):
        read_inputs([batch], GREY32)
    with pytest.raises(InputError, match="takes 3 channels, got 2"):
        read_inputs([batch], RGB32)


def test_unknown_suffix_lists_what_is_accepted(tmp_path) -> None:
    odd = tmp_path / "x.gif"
    odd.write_bytes(b"GIF89a")
    with pytest.raises(InputError, match=r"\.npy/\.pt/\.pth"):
        read_inputs([odd], GREY32)


def test_one_grey_hw_array_is_one_image_and_sizes_are_kept(tmp_path) -> None:
    from mimicfast.decode import decode_inputs

    hw = _npy(tmp_path / "one.npy", np.full((28, 28), 255, np.uint8))
    decoded = decode_inputs([hw], Geometry(1, 32, pad=True))
    assert decoded.images.shape == (1, 1, 32, 32) and decoded.names == ["one_0000"]
    assert decoded.sizes == [(28, 28)]
    assert float(decoded.images[0, 0, 2:30, 2:30].min()) == 1.0 and float(decoded.images.sum()) == 28 * 28

