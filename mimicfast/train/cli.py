"""``mimicfast train classifier|ddpm``: train the bundled Fashion-MNIST models (seeded, resumable).

Re-running the same command with the same ``--run-dir`` resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from mimicfast.train.configs import ClassifierConfig, DDPMConfig


def _add_config_args(parser: argparse.ArgumentParser, config_cls) -> None:
    for f in fields(config_cls):
        flag, default = f"--{f.name.replace('_', '-')}", f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"(default: {default})")


def _config_from_args(config_cls, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls)})


def add_parser(subparsers) -> None:
    """Register ``train`` and its ``classifier`` / ``ddpm`` subcommands."""
    parser = subparsers.add_parser("train", help="train the bundled Fashion-MNIST classifier or diffusion model")
    sub = parser.add_subparsers(dest="what", required=True)
    for name, cfg_cls, default_export in (
        ("classifier", ClassifierConfig, "mimicfast/weights/fmnist_classifier.safetensors"),
        ("ddpm", DDPMConfig, "mimicfast/weights/fmnist_unet.safetensors"),
    ):
        p = sub.add_parser(name, help=f"train the {name} (resumes from --run-dir)")
        _add_config_args(p, cfg_cls)
        p.add_argument("--run-dir", default=f"runs/{name}", help="checkpoint folder (resume point)")
        p.add_argument("--export", default=default_export, help="safetensors path of the final weights")
        p.add_argument("--until", type=int, default=None,
                       help="stop after this many steps (checkpointed; the same command resumes later)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.set_defaults(func=_run, config_cls=cfg_cls)


def _run(args: argparse.Namespace) -> int:
    import torch

    from mimicfast.train.classifier import train_classifier
    from mimicfast.train.ddpm import train_ddpm

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _config_from_args(args.config_cls, args)
    train = train_classifier if args.what == "classifier" else train_ddpm
    result = train(cfg, args.run_dir, export=args.export, until=args.until)
    print(json.dumps(result, indent=2))
    return 0
