"""``mimicfast purify INPUT... -o OUTDIR [--checkpoint PATH]``: purify images from files, resumably and safely.

The command runs in two phases. :func:`plan` reads and checks every argument and input file and decides every
output path, writing nothing; :func:`execute` then purifies in chunks of ``--batch-size`` images, each chunk saved
atomically in ``OUTDIR/.partial/`` under a key of everything that determines its result, so a rerun of the same
command reuses finished chunks and recomputes only the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from mimicfast.api import Purifier
    from mimicfast.presets import Preset
    from mimicfast.sampling import Denoiser

__all__ = ["add_parser", "plan", "execute", "run", "PARTIAL"]

PARTIAL = ".partial"
# The options of this command that fit an input to the model (named in the hints of errors).
FIT_OPTIONS = frozenset({"--resize", "--pad", "--grey"})
# Bumped whenever the chunk file layout or the meaning of its key changes, so old chunks are never reused.
_CHUNK_FORMAT = 2

DESCRIPTION = """\
Purify images with MimicDiffusion and write the results to OUTDIR.

Inputs are pictures (PNG, JPEG, BMP, WebP; 8- or 16-bit), .npy and .pt/.pth batches of shape [N, C, H, W],
[C, H, W], grey [N, H, W] or one grey [H, W] image (uint8, or float in 0..1), and folders (every picture and
batch directly inside). Outputs are one PNG per image, NAME_purified.png, and purified.pt holding all images and
their names. The model is the bundled Fashion-MNIST UNet unless --checkpoint names another.

Nothing is written until every argument and every input has been read and checked; no output ever replaces a
file the command reads (inputs, checkpoint, config; compared by file identity, so links count). Finished chunks
are kept in OUTDIR/.partial/ and a rerun reuses a chunk only if the model's weights and config, the preset and
steps, the seeds, --autocast, the device type and the chunk's input pixels are all the same; a damaged chunk
is recomputed. Bad input exits with status 2 and a one-line reason.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mimicfast purify``."""
    p = subparsers.add_parser(
        "purify",
        help="purify images, .npy/.pt batches or folders with MimicDiffusion",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="pictures, .npy/.pt batches or folders")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument(
        "--checkpoint", type=Path, default=None,
        help="diffusion model file (or diffusers folder); default: the bundled Fashion-MNIST model (32x32 grey)",
    )
    p.add_argument(
        "--config", default=None,
        help="model config: a name such as imagenet256-uncond, or a .json file (default: found automatically)",
    )
    p.add_argument(
        "--preset", default="paper",
        help="paper (the paper's Algorithm 1) or released (the authors' code); default: paper",
    )
    p.add_argument(
        "--steps", type=int, default=None,
        help="reverse steps T; default: the paper's T for the model's size with --preset paper (100 for models "
             "up to 64x64, 1000 for larger ones), 100 with --preset released",
    )
    p.add_argument("--seed", type=int, default=0, help="image number i uses seed SEED + i (default: 0)")
    p.add_argument("--device", default="cpu", help="where to run: cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per chunk (default: 8)")
    p.add_argument(
        "--autocast", choices=["bf16", "fp16"], default=None,
        help="run the network in this precision, on the CPU or CUDA (faster, not bit-equal; default: exact)",
    )
    fit = p.add_mutually_exclusive_group()
    fit.add_argument("--resize", action="store_true", help="resize and center-crop inputs to the model's size")
    fit.add_argument(
        "--pad", action="store_true",
        help="zero-pad smaller inputs to the model's size (28x28 -> 32x32); outputs are cropped back (see --crop)",
    )
    p.add_argument(
        "--crop", action=argparse.BooleanOptionalAction, default=True,
        help="with --pad, crop each output back to its input's size, 28x28 in -> 28x28 out (default: on; "
             "--no-crop keeps the model's size)",
    )
    p.add_argument("--grey", action="store_true", help="convert colour inputs to grey for a 1-channel model")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show progress bars (default: on when stderr is a terminal)",
    )
    p.set_defaults(func=run)


@dataclass
class Plan:
    """Everything :func:`execute` needs, checked: nothing of it has been written yet."""

    out: Path
    denoiser: Denoiser
    preset: Preset
    images: torch.Tensor  # [N, C, S, S] float32 in [0, 1]
    names: list[str]
    seeds: list[int]
    outputs: list[Path]  # one PNG per image
    chunks: list[tuple[int, int, Path, str]]  # (start, stop, file, key)
    purifier: Purifier
    boxes: list[tuple[int, int, int, int]] | None  # (top, left, height, width) of each input in its padded image
    progress: bool


def plan(args: argparse.Namespace) -> Plan:
    """Read and check every argument and input, decide every output; write nothing.

    Raises InputError / CheckpointError (bad argument, input, checkpoint; an output that would replace a file
    the command reads; an output folder that cannot be written) or OSError (unreadable file).
    """
    from mimicfast.api import Purifier
    from mimicfast.decode import Geometry, decode_inputs, expand_inputs
    from mimicfast.default import UNET_PATH
    from mimicfast.errors import InputError
    from mimicfast.models import load
    from mimicfast.models.identity import model_digest
    from mimicfast.outputs import check_outputs, check_writable_dir, files_read_by_load, fit_name, name_max
    from mimicfast.progress import show_progress
    from mimicfast.purify_options import resolve_device, resolve_preset
    from mimicfast.sampling import as_denoiser
    from mimicfast.seeding import expand_seeds
    from mimicfast.validate import check_count

    # Arguments first: they are cheap to check and need no file.
    check_count(args.batch_size, "--batch-size")
    device = resolve_device(args.device)
    resolve_preset(args.preset, args.steps, {})
    check_writable_dir(args.out, "--out")
    partial = args.out / PARTIAL
    if partial.exists() and not partial.is_dir():
        raise InputError(f"{partial} exists and is not a folder")

    inputs = expand_inputs(args.inputs)
    checkpoint = UNET_PATH if args.checkpoint is None else args.checkpoint  # found from the package, not the cwd
    model = load(checkpoint, args.config)
    denoiser = as_denoiser(model)
    preset = resolve_preset(args.preset, args.steps, {}, denoiser)
    geometry = Geometry(denoiser.channels or 3, denoiser.image_size, args.resize, args.pad, args.grey, FIT_OPTIONS)
    decoded = decode_inputs(inputs, geometry)
    images, names = decoded.images, decoded.names
    seeds = expand_seeds(args.seed, len(names))
    boxes = _boxes(decoded.sizes, images.shape[-1]) if args.pad and args.crop else None

    limit = name_max(args.out)
    outputs = [args.out / fit_name(name, "_purified.png", limit) for name in names]
    model_content = model_digest(model)
    chunks = []
    for start in range(0, len(names), args.batch_size):
        stop = min(start + args.batch_size, len(names))
        key = _chunk_key(model_content, preset, seeds[start], images[start:stop], args.autocast, device)
        chunks.append((start, stop, partial / f"{key}.pt", key))
    reads = [*inputs, *files_read_by_load(checkpoint, args.config)]
    check_outputs([*outputs, args.out / "purified.pt", *(c[2] for c in chunks)], reads)

    progress = show_progress(args.progress)
    # One Purifier for all chunks: on CUDA its captured graphs and measured memory serve every chunk. Built here,
    # so that a setting it refuses fails before anything is written.
    fast = True if args.autocast else None  # autocast lives on the fast path, which the CPU runs without graphs
    purifier = Purifier(denoiser.to(device), preset=preset, progress=progress, fast=fast, autocast=args.autocast)
    return Plan(args.out, denoiser, preset, images, names, seeds, outputs, chunks, purifier, boxes, progress)


def _boxes(sizes: list[tuple[int, int]], size: int) -> list[tuple[int, int, int, int]]:
    """Where each input lies in its zero-padded image (``decode`` centres it): (top, left, height, width)."""
    return [((size - h) // 2, (size - w) // 2, h, w) for h, w in sizes]


def execute(job: Plan) -> None:
    """Purify chunk by chunk (reusing checked finished chunks), write the PNGs and purified.pt, then remove the
    chunk files this run used (never any other file) and ``.partial/`` itself if that leaves it empty.

    ``.partial/`` is created only when the first chunk is saved, so a run that fails on its first chunk (e.g. a
    model that returns the wrong shape) leaves no trace."""
    from mimicfast.atomic import save_torch
    from mimicfast.outputs import write_png
    from mimicfast.progress import progress_bar

    partial = job.out / PARTIAL
    results = []
    for start, stop, chunk_file, key in progress_bar(job.chunks, progress=job.progress, desc="chunks", unit="chunk"):
        shape = (stop - start, *job.images.shape[1:])
        out, problem = _load_chunk(chunk_file, key, shape)
        if out is None:
            if problem is not None:
                print(f"mimicfast: recomputing {chunk_file.name} ({problem})", file=sys.stderr)
            out = job.purifier(job.images[start:stop], seed=job.seeds[start:stop]).detach().cpu().float()
            partial.mkdir(parents=True, exist_ok=True)
            save_torch({"format": _CHUNK_FORMAT, "key": key, "images": out}, chunk_file)
        boxes = [None] * len(out) if job.boxes is None else job.boxes[start:stop]
        images = [_crop(o, b) for o, b in zip(out, boxes, strict=True)]
        for image, path in zip(images, job.outputs[start:stop], strict=True):
            write_png(image, path)
        results.extend(images)
    save_torch({"images": _stack(results), "names": job.names}, job.out / "purified.pt")
    for _, _, chunk_file, _ in job.chunks:
        chunk_file.unlink(missing_ok=True)
    try:
        partial.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        print(f"mimicfast: kept {partial}: it holds files this run did not write", file=sys.stderr)


def _crop(image: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """``image`` [C, S, S] cut to ``box`` (None: the whole image)."""
    if box is None:
        return image
    top, left, h, w = box
    return image[:, top : top + h, left : left + w].contiguous()


def _stack(images: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One [N, C, H, W] tensor, or a list of [C, H, W] tensors when cropping left images of different sizes."""
    import torch

    if len({tuple(i.shape) for i in images}) == 1:
        return torch.stack(images)
    return images


def run(args: argparse.Namespace) -> int:
    """``mimicfast purify``: :func:`plan`, then :func:`execute`."""
    job = plan(args)
    execute(job)
    n = len(job.names)
    print(f"wrote {n} purified image{'' if n == 1 else 's'} and purified.pt to {job.out}")
    return 0


def _chunk_key(
    model_digest: str, preset: Preset, first_seed: int, pixels: torch.Tensor, autocast: str | None,
    device: torch.device,
) -> str:
    """Identifies a chunk's result: same model content, preset (every field), seeds, precision, device type and
    input pixels give the same key."""
    settings = (_CHUNK_FORMAT, model_digest, repr(preset), first_seed, tuple(pixels.shape), autocast, device.type)
    digest = hashlib.sha256(repr(settings).encode())
    digest.update(pixels.contiguous().numpy())
    return digest.hexdigest()[:32]


def _load_chunk(path: Path, key: str, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, str | None]:
    """A finished chunk's images if ``path`` holds a complete, matching chunk; else (None, why) — why is None
    when there is no chunk file at all."""
    import torch

    from mimicfast.decode import open_input
    from mimicfast.errors import InputError
    from mimicfast.safe_read import read_torch
    from mimicfast.validate import check_images

    if not path.exists():
        return None, None
    expected = 4
    for dim in shape:
        expected *= dim
    try:
        with open_input(path, max_bytes=2 * expected + (1 << 20)) as f:
            obj = read_torch(f)
    except Exception as exc:  # noqa: BLE001 -- any unreadable chunk is recomputed
        return None, f"unreadable: {type(exc).__name__}"
    if not isinstance(obj, dict) or obj.get("key") != key:
        return None, "written for other settings"
    images = obj.get("images")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.float32 or tuple(images.shape) != shape:
        return None, "wrong contents"
    try:
        check_images(images)
    except InputError as exc:
        return None, str(exc)
    return images, None
