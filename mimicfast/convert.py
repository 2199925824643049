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

DESCRIPTION = """\
Convert any supported checkpoint SRC to DST.safetensors plus DST.json. The pair loads without pickle
(mimicfast.load finds DST.json beside DST.safetensors) into the same network with bit-identical weights; use it
to turn an EDM .pkl, whose own loader runs code stored in the file, into files that are safe to share. Nothing
is written if an output would replace a file that is read (SRC, its .json, a config file).
"""


def _destination(dst: str | PathLike[str]) -> tuple[Path, Path]:
    dst = Path(dst)
    stem = dst.with_suffix("") if dst.suffix.lower() in (".safetensors", ".json") else dst
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def convert(src: str | PathLike[str], dst: str | PathLike[str], config: Any = None) -> tuple[Path, Path]:
    """Convert checkpoint ``src`` to ``<dst>.safetensors`` and ``<dst>.json``.

    Both files are written atomically, and only after every check: nothing is written when a destination is
    a file that is read (``src``, its ``<stem>.json``, a config file; compared by file identity), lies under a
    non-folder or on a read-only file system.

    Args:
        src: anything :func:`mimicfast.models.load` reads (EDM ``.pkl``, guided-diffusion ``.pt``, ...).
        dst: output path stem (a ``.safetensors`` or ``.json`` suffix is stripped).
        config: passed to :func:`mimicfast.models.load` for ``src``.

    Returns:
        The two written paths (weights, config).

    Raises:
        InputError: an output would replace a file that is read, the destination cannot be written, or the
            model came from a diffusers directory (already stored as safetensors by diffusers).
        CheckpointError / FileNotFoundError: from loading ``src``.
    """
    from safetensors.torch import save

    from mimicfast.atomic import write_atomic
    from mimicfast.models import load
    from mimicfast.models.configs import GUIDANCE_SCALE
    from mimicfast.outputs import check_outputs, check_writable_dir, files_read_by_load

    weights, cfg_path = _destination(dst)
    src = Path(src)
    check_writable_dir(weights.parent, "destination")
    reads = files_read_by_load(src, None if config is None or isinstance(config, dict) else str(config))
    check_outputs([weights, cfg_path], reads)  # before loading: a refused destination costs nothing
    model = load(src, config)
    cfg = getattr(model, "checkpoint_config", None)
    if cfg is None or cfg.get("family") not in ("guided_diffusion", "edm"):
        raise InputError(f"{src}: only guided-diffusion and EDM networks can be converted (diffusers models are "
                         "already safetensors)")
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    scales = getattr(model, "guidance_scales", {})  # the tuned scales travel with the weights
    text = json.dumps({**cfg, **({GUIDANCE_SCALE: scales} if scales else {})}, indent=1, allow_nan=False) + "\n"
    weights.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(weights, lambda f: f.write(save(tensors, metadata={"format": "pt", "family": cfg["family"]})))
    write_atomic(cfg_path, lambda f: f.write(text.encode()))
    return weights, cfg_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mimicfast convert``."""
    p = subparsers.add_parser("convert", help="convert a checkpoint to safetensors + JSON config",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, metavar="SRC", help="checkpoint: EDM .pkl, .pt/.pth/.bin/.ckpt, .safetensors")
    p.add_argument("dst", type=Path, metavar="DST", help="output stem: writes DST.safetensors and DST.json")
    p.add_argument("--config", default=None,
                   help="config of SRC: a guided-diffusion config name or a .json file (default: auto-detect)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    weights, cfg_path = convert(args.src, args.dst, args.config)
    print(f"wrote {weights} and {cfg_path}")
    return 0
