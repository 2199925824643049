"""The measured presets table of docs/RESULTS.md, on the bundled Fashion-MNIST models.

Each row purifies the first ``--n`` bundled test images with one preset variant and reports standard accuracy
(purified clean images), accuracy on PGD images made against the bare classifier (an attack that ignores the
purifier) and, unless ``--no-bpda``, accuracy under BPDA+EOT through that variant. Every row is cached as
``OUT/<row>.json`` (rerunning skips finished rows with the same settings), and the Markdown table is printed.

    python scripts/fmnist_results.py --rows paper-literal paper released long-only short-only l2 no-window
    python scripts/fmnist_results.py --no-bpda --rows paper-scale-1 paper-scale-0.1 paper-scale-0.01
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mimicfast.default import load_default, load_test_slice
from mimicfast.evaluate import AttackSettings, defended, settings_record, undefended
from mimicfast.presets import Preset, get_preset

# Row name -> (description, preset). Ablations start from the default ``paper`` preset (calibrated scale).
ROWS: dict[str, tuple[str, Preset]] = {
    "paper-literal": ("paper, literal R_t (scale 1)", get_preset("paper").replace(scale=1.0)),
    "paper": (f"paper (default, scale {get_preset('paper').scale:g})", get_preset("paper")),
    "released": ("released", get_preset("released")),
    "long-only": ("paper, long-range only (upsample=None)", get_preset("paper").replace(upsample=None)),
    "short-only": ("paper, short-range only (long_range=False)", get_preset("paper").replace(long_range=False)),
    "l2": ("paper, L2 instead of L1 (distance='l2')", get_preset("paper").replace(distance="l2")),
    "no-window": ("paper, no window (window=None)", get_preset("paper").replace(window=None)),
}


def row_preset(name: str) -> tuple[str, Preset]:
    """A named row, or ``paper-scale-<s>`` / ``released-scale-<s>`` for a scale sweep."""
    for base in ("paper", "released"):
        prefix = f"{base}-scale-"
        if name.startswith(prefix):
            scale = float(name[len(prefix):])
            return f"{base}, scale {scale:g}", get_preset(base).replace(scale=scale)
    return ROWS[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--bpda-steps", type=int, default=5)
    parser.add_argument("--eot", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bpda", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model, classifier = load_default()
    x, y = load_test_slice(args.n)
    attack = AttackSettings(args.eps, args.pgd_steps, args.bpda_steps, args.eot, args.seed)
    bare, x_pgd = undefended(classifier, x, y, attack)
    print(f"undefended: clean {bare['clean']:.3f}, PGD {bare['pgd']:.3f} (n={args.n})", flush=True)
    lines = ["| row | standard | PGD (ignores purifier) | BPDA+EOT | s/image |", "|---|---|---|---|---|"]
    for name in args.rows:
        label, preset = row_preset(name)
        settings = {**settings_record(preset, args.steps, attack), "n": args.n, "bpda": not args.no_bpda}
        path = args.out / f"{name}.json"
        cached = json.loads(path.read_text()) if path.is_file() else None
        if cached is None or cached["settings"] != json.loads(json.dumps(settings)):
            t0 = time.perf_counter()
            acc, _ = defended(model, classifier, x, y, x_pgd, preset, args.steps, attack, bpda=not args.no_bpda)
            cached = {"row": name, "label": label, "accuracy": acc, "undefended": bare, "settings": settings,
                      "wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}
            path.write_text(json.dumps(cached, indent=2) + "\n")
        acc = cached["accuracy"]
        bpda = f"{100 * acc['bpda_eot']:.1f}%" if "bpda_eot" in acc else "-"
        lines.append(f"| {label} | {100 * acc['standard']:.1f}% | {100 * acc['pgd']:.1f}% | {bpda} | "
                     f"{cached['wall_s'] / args.n:.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
