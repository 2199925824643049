"""Command line: ``mimicfast <command> ...`` (also ``python -m mimicfast``).

Each command lives in its own module, listed in ``SUBCOMMAND_MODULES``, which exposes ``add_parser(subparsers)``
and sets ``func`` on its parser. Command modules import torch only inside the functions that run, so that
``mimicfast --help`` answers at once. Bad input (an InputError or CheckpointError, which are ValueErrors) and
failed file operations (OSError) exit with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "mimicfast.purify_cli",
    "mimicfast.demo",
    "mimicfast.evaluate.cli",
    "mimicfast.train.cli",
    "mimicfast.convert",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mimicfast`` parser with every command of ``SUBCOMMAND_MODULES``."""
    from mimicfast.version import __version__

    parser = argparse.ArgumentParser(
        prog="mimicfast",
        description="MimicDiffusion adversarial purification: purify images, run the demo, evaluate defenses.",
        epilog="Run 'mimicfast COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"mimicfast {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def error_line(exc: BaseException) -> str:
    """One line naming the problem: an OSError as 'FILE: reason', anything else by its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 bad input or failed file operation, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"mimicfast: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimicfast: interrupted", file=sys.stderr)
        return 130
