"""``mimicfast purify INPUT... -o OUTDIR --checkpoint PATH --config NAME``.

Reads PNG/JPEG files and ``.npy`` / ``.pt`` batches, purifies them in chunks of ``--batch-size`` and writes
one PNG per image plus ``purified.pt`` ({"images": [N, C, H, W] float in [0, 1], "names": [...]}).
Nothing is written before every input and the checkpoint have been read and checked; an output never
replaces an input. Finished chunks are kept in ``OUTDIR/.partial/``, so a rerun of the same command
resumes where an interrupted one stopped (image i always uses seed ``--seed + i``).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mimicfast.errors import InputError
from mimicfast.presets import PRESETS

PARTIAL = ".partial"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("purify", help="purify images with MimicDiffusion", description=__doc__)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="PNG/JPEG images, .npy or .pt batches")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument("--checkpoint", required=True, type=Path, help="diffusion model checkpoint")
    p.add_argument("--config", default=None, help="model config name (e.g. imagenet256-uncond) when not auto-detected")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="method preset (default: paper)")
    p.add_argument("--steps", type=int, default=None, help="reverse steps T (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per sampler call (default: 8)")
    p.add_argument(
        "--autocast",
        choices=["bf16", "fp16"],
        default=None,
        help="run the network in this precision on the fast path, CPU or CUDA (default: the model's, exact)",
    )
    fit = p.add_mutually_exclusive_group()
    fit.add_argument("--resize", action="store_true", help="resize and center-crop pictures to the model's size")
    fit.add_argument(
        "--pad", action="store_true", help="zero-pad smaller inputs to the model's size (Fashion-MNIST 28x28 -> 32x32)"
    )
    p.set_defaults(func=run)


def _output_paths(out: Path, names: list[str]) -> list[Path]:
    return [out / f"{name}_purified.png" for name in names]


def _chunk_key(args: argparse.Namespace, chunk: torch.Tensor, start: int) -> str:
    """Identifies a finished chunk: same pixels, model, settings and seeds give the same key."""
    digest = hashlib.sha256(chunk.numpy().tobytes())
    settings = (args.checkpoint.resolve(), args.config, args.preset, args.steps, args.seed + start, args.autocast)
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:24]


def run(args: argparse.Namespace) -> int:
    from mimicfast.api import Purifier
    from mimicfast.io import read_inputs, write_png
    from mimicfast.models import load
    from mimicfast.sampling import as_denoiser

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    denoiser = as_denoiser(load(args.checkpoint, args.config))
    channels = denoiser.channels or 3
    images, names = read_inputs(args.inputs, channels, denoiser.image_size, resize=args.resize, pad=args.pad)
    outputs = _output_paths(args.out, names) + [args.out / "purified.pt"]
    inputs = {p.resolve() for p in args.inputs}
    clash = [p for p in outputs if p.resolve() in inputs]
    if clash:
        raise InputError(f"output {clash[0]} would overwrite an input; choose another --out")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a folder")

    partial = args.out / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    denoiser = denoiser.to(args.device)
    # One Purifier for all chunks: on CUDA its captured graphs and measured memory serve every chunk.
    fast = True if args.autocast else None  # autocast lives on the fast path, which the CPU runs without graphs
    purifier = Purifier(
        denoiser, preset=args.preset, steps=args.steps, progress=True, fast=fast, autocast=args.autocast
    )
    results = []
    starts = range(0, len(names), args.batch_size)
    for start in tqdm(starts, desc="batches", unit="batch"):
        stop = min(start + args.batch_size, len(names))
        chunk_file = partial / f"{_chunk_key(args, images[start:stop], start)}.pt"
        if chunk_file.is_file():
            out = torch.load(chunk_file, map_location="cpu", weights_only=True)
        else:
            seeds = list(range(args.seed + start, args.seed + stop))
            out = purifier(images[start:stop], seed=seeds)
            torch.save(out.cpu(), chunk_file)
        for image, path in zip(out, outputs[start:stop], strict=True):
            write_png(image, path)
        results.append(out.cpu())
    torch.save({"images": torch.cat(results), "names": names}, args.out / "purified.pt")
    for f in partial.glob("*.pt"):
        f.unlink()
    partial.rmdir()
    print(f"wrote {len(names)} purified images and purified.pt to {args.out}")
    return 0
