"""Command line: ``mimicfast <command> ...`` (also ``python -m mimicfast``).

Each command lives in its own module, which exposes ``add_parser(subparsers)`` and sets ``func`` on its
parser. Bad input exits with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = ("mimicfast.purify_cli", "mimicfast.demo", "mimicfast.train.cli", "mimicfast.convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimicfast", description="Fast MimicDiffusion adversarial purification.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        # InputError and CheckpointError are ValueErrors; keep the message to one line.
        print(f"mimicfast: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimicfast: interrupted", file=sys.stderr)
        return 130
