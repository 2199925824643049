"""``mimicfast purify INPUT... -o OUTDIR --checkpoint PATH``: purify images from files, resumably and safely.

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

    from mimicfast.presets import Preset
    from mimicfast.sampling import Denoiser

__all__ = ["add_parser", "default_steps", "plan", "execute", "run", "PARTIAL"]

PARTIAL = ".partial"
# The options of this command that fit an input to the model (named in the hints of errors).
FIT_OPTIONS = frozenset({"--resize", "--pad", "--grey"})
# Bumped whenever the chunk file layout or the meaning of its key changes, so old chunks are never reused.
_CHUNK_FORMAT = 2

DESCRIPTION = """\
Purify images with MimicDiffusion and write the results to OUTDIR.

Inputs are pictures (PNG, JPEG, BMP, WebP; 8- or 16-bit), .npy and .pt batches of shape [N, C, H, W] (uint8, or
float in 0..1), and folders (every picture and batch directly inside). Outputs are one PNG per image,
NAME_purified.png, and purified.pt holding all images and their names.

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
    p.add_argument("--checkpoint", required=True, type=Path, help="diffusion model file (or diffusers folder)")
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
        help="reverse steps T; default: the paper's T for the model's size with --preset paper (100 for 32x32 "
             "and 64x64 models, 1000 for larger ones), 100 with --preset released",
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
    fit.add_argument("--pad", action="store_true", help="zero-pad smaller inputs to the model's size (28x28 -> 32x32)")
    p.add_argument("--grey", action="store_true", help="convert colour inputs to grey for a 1-channel model")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show progress bars (default: on when stderr is a terminal)",
    )
    p.set_defaults(func=run)


def default_steps(preset: str, image_size: int | None) -> int | None:
    """The paper's T for a model of ``image_size`` with the ``paper`` preset (100 up to 64x64, 1000 above, as in
    the paper's experiments); None (the preset's own) for other presets or a model of unknown size."""
    if preset != "paper" or image_size is None:
        return None
    return 100 if image_size <= 64 else 1000


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
    batch_size: int
    autocast: str | None
    progress: bool


def plan(args: argparse.Namespace) -> Plan:
    """Read and check every argument and input, decide every output; write nothing.

    Raises InputError / CheckpointError (bad argument, input, checkpoint; an output that would replace a file
    the command reads; an output folder that cannot be written) or OSError (unreadable file).
    """
    from mimicfast.api import resolve_device, resolve_preset
    from mimicfast.decode import Geometry, expand_inputs, read_inputs
    from mimicfast.errors import InputError
    from mimicfast.models import load
    from mimicfast.models.identity import model_digest
    from mimicfast.outputs import check_outputs, check_writable_dir, files_read_by_load, fit_name, name_max
    from mimicfast.presets import get_preset
    from mimicfast.sampling import as_denoiser
    from mimicfast.seeding import expand_seeds

    # Arguments first: they are cheap to check and need no file.
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    get_preset(args.preset)
    if args.steps is not None:
        resolve_preset(args.preset, args.steps, {})
    check_writable_dir(args.out, "--out")
    partial = args.out / PARTIAL
    if partial.exists() and not partial.is_dir():
        raise InputError(f"{partial} exists and is not a folder")

    inputs = expand_inputs(args.inputs)
    model = load(args.checkpoint, args.config)
    denoiser = as_denoiser(model)
    steps = args.steps if args.steps is not None else default_steps(args.preset, denoiser.image_size)
    preset = resolve_preset(args.preset, steps, {})
    geometry = Geometry(denoiser.channels or 3, denoiser.image_size, args.resize, args.pad, args.grey, FIT_OPTIONS)
    images, names = read_inputs(inputs, geometry)
    seeds = expand_seeds(args.seed, len(names))

    limit = name_max(args.out)
    outputs = [args.out / fit_name(name, "_purified.png", limit) for name in names]
    model_content = model_digest(model)
    chunks = []
    for start in range(0, len(names), args.batch_size):
        stop = min(start + args.batch_size, len(names))
        key = _chunk_key(model_content, preset, seeds[start], images[start:stop], args.autocast, device)
        chunks.append((start, stop, partial / f"{key}.pt", key))
    reads = [*inputs, *files_read_by_load(args.checkpoint, args.config)]
    check_outputs([*outputs, args.out / "purified.pt", *(c[2] for c in chunks)], reads)

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    return Plan(args.out, denoiser.to(device), preset, images, names, seeds, outputs, chunks, args.batch_size,
                args.autocast, progress)


def execute(job: Plan) -> None:
    """Purify chunk by chunk (reusing checked finished chunks), write the PNGs and purified.pt, then remove the
    chunk files this run used (never any other file) and ``.partial/`` itself if that leaves it empty."""
    import torch
    from tqdm.auto import tqdm

    from mimicfast.api import Purifier
    from mimicfast.atomic import save_torch
    from mimicfast.outputs import write_png

    partial = job.out / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    # One Purifier for all chunks: on CUDA its captured graphs and measured memory serve every chunk.
    fast = True if job.autocast else None  # autocast lives on the fast path, which the CPU runs without graphs
    purifier = Purifier(job.denoiser, preset=job.preset, progress=job.progress, fast=fast, autocast=job.autocast)
    results = []
    for start, stop, chunk_file, key in tqdm(job.chunks, desc="chunks", unit="chunk", disable=not job.progress):
        shape = (stop - start, *job.images.shape[1:])
        out, problem = _load_chunk(chunk_file, key, shape)
        if out is None:
            if problem is not None:
                print(f"mimicfast: recomputing {chunk_file.name} ({problem})", file=sys.stderr)
            out = purifier(job.images[start:stop], seed=job.seeds[start:stop]).detach().cpu().float()
            save_torch({"format": _CHUNK_FORMAT, "key": key, "images": out}, chunk_file)
        for image, path in zip(out, job.outputs[start:stop], strict=True):
            write_png(image, path)
        results.append(out)
    save_torch({"images": torch.cat(results), "names": job.names}, job.out / "purified.pt")
    for _, _, chunk_file, _ in job.chunks:
        chunk_file.unlink(missing_ok=True)
    try:
        partial.rmdir()
    except OSError:
        print(f"mimicfast: kept {partial}: it holds files this run did not write", file=sys.stderr)


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

    if not path.exists():
        return None, None
    expected = 4
    for dim in shape:
        expected *= dim
    try:
        with open_input(path, max_bytes=2 * expected + (1 << 20)) as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable chunk is recomputed
        return None, f"unreadable: {type(exc).__name__}"
    if not isinstance(obj, dict) or obj.get("key") != key:
        return None, "written for other settings"
    images = obj.get("images")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.float32 or tuple(images.shape) != shape:
        return None, "wrong contents"
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        return None, "values outside [0, 1]"
    return images, None
