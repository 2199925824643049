"""``mimicfast convert SRC DST [--config CONFIG]``: any supported checkpoint -> ``DST.safetensors`` + ``DST.json``.

The pair needs no pickle to read: :func:`mimicfast.models.load` (``mimicfast.load``) finds ``DST.json`` beside
``DST.safetensors`` and rebuilds the same network with bit-identical tensors. Typical use is turning an EDM
``.pkl`` (whose normal loader executes code stored in the file) into files that are safe to share.
"""

from __future__ import annotations

import argparse
import json
from os import PathLike
from pathlib import Path
from typing import Any

from mimicfast.errors import InputError

__all__ = ["add_parser", "convert"]


def _destination(dst: str | PathLike[str]) -> tuple[Path, Path]:
    dst = Path(dst)
    stem = dst.with_suffix("") if dst.suffix.lower() in (".safetensors", ".json") else dst
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def convert(src: str | PathLike[str], dst: str | PathLike[str], config: Any = None) -> tuple[Path, Path]:
    """Convert checkpoint ``src`` to ``<dst>.safetensors`` and ``<dst>.json``.

    Args:
        src: anything :func:`mimicfast.models.load` reads (EDM ``.pkl``, guided-diffusion ``.pt``, ...).
        dst: output path stem (a ``.safetensors`` or ``.json`` suffix is stripped).
        config: passed to :func:`mimicfast.models.load` for ``src``.

    Returns:
        The two written paths (weights, config).

    Raises:
        InputError: an output would overwrite ``src``, or the model came from a diffusers directory (already
            stored as safetensors by diffusers).
        CheckpointError / FileNotFoundError: from loading ``src``.
    """
    from safetensors.torch import save_file

    from mimicfast.models import load

    weights, cfg_path = _destination(dst)
    src = Path(src)
    if src.exists() and src.resolve() in (weights.resolve(), cfg_path.resolve()):
        raise InputError(f"convert would overwrite its source {src}; choose another destination")
    model = load(src, config)
    cfg = getattr(model, "checkpoint_config", None)
    if cfg is None or cfg.get("family") not in ("guided_diffusion", "edm"):
        raise InputError(f"{src}: only guided-diffusion and EDM networks can be converted (diffusers models are "
                         "already safetensors)")
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(weights), metadata={"format": "pt", "family": cfg["family"]})
    cfg_path.write_text(json.dumps(cfg, indent=1, allow_nan=False) + "\n")
    return weights, cfg_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mimicfast convert``."""
    p = subparsers.add_parser("convert", help="convert a checkpoint to safetensors + JSON config",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="checkpoint: EDM .pkl, .pt/.pth/.bin/.ckpt, .safetensors")
    p.add_argument("dst", type=Path, help="output stem: writes DST.safetensors and DST.json")
    p.add_argument("--config", default=None,
                   help="config of SRC: a guided-diffusion config name or a .json file (default: auto-detect)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    weights, cfg_path = convert(args.src, args.dst, args.config)
    print(f"wrote {weights} and {cfg_path}")
    return 0
