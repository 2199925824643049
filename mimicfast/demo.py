"""``mimicfast demo``: attack the bundled Fashion-MNIST classifier, purify, and show by how much it helps.

On the first ``--n`` bundled test images it measures

* the bare classifier: clean accuracy and accuracy under PGD-Linf;
* for each preset, the classifier behind the purifier: purified clean accuracy (standard accuracy), accuracy
  on the PGD images (an attack that ignores the purifier), and accuracy under BPDA+EOT through the purifier;

prints a table, and writes ``demo.png`` (clean / adversarial / purified rows) and ``demo.json`` (every number
with its settings and seed) to ``--out``. Everything runs from the weights shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from mimicfast.errors import InputError
from mimicfast.presets import PRESETS

# Sized so that the defaults finish in about 2 minutes on 2 idle CPU cores (docs/RESULTS.md has the timing)
# and reproduce the paper/released rows of the RESULTS table.
DEFAULT_N = 64
DEFAULT_STEPS = 20
DEFAULT_EPS = 0.1
_ZOOM = 3  # grid pixels per image pixel
_LABEL_W = 150


def add_parser(subparsers) -> None:
    """Register ``mimicfast demo``."""
    p = subparsers.add_parser("demo", help="attack, purify and score the bundled Fashion-MNIST classifier",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"test images (default: {DEFAULT_N}, max 1000)")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS,
                   help=f"Linf radius in [0, 1] pixel units (default: {DEFAULT_EPS}, the usual Fashion-MNIST budget)")
    p.add_argument("--preset", nargs="+", default=["paper", "released"], choices=sorted(PRESETS),
                   help="presets to evaluate (default: paper released)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"respaced reverse steps of the purifier, also inside BPDA+EOT (default: {DEFAULT_STEPS})")
    p.add_argument("--pgd-steps", type=int, default=20, help="PGD iterations (default: 20)")
    p.add_argument("--bpda-steps", type=int, default=5, help="BPDA+EOT iterations (default: 5; 0 skips it)")
    p.add_argument("--eot", type=int, default=2, help="purifier draws per BPDA+EOT iteration (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of attacks and purifier (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is faster on a CPU shared with other jobs)")
    p.add_argument("--out", type=Path, default=Path("mimicfast-demo"), help="output folder (default: mimicfast-demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    from mimicfast.default import load_default, load_test_slice
    from mimicfast.evaluate import AttackSettings, defended, settings_record, undefended

    if not 1 <= args.n <= 1000:
        raise InputError(f"--n must be in [1, 1000], got {args.n}")
    if not 0 <= args.eps <= 1:
        raise InputError(f"--eps must be in [0, 1], got {args.eps}")
    if args.pgd_steps < 1 or args.bpda_steps < 0 or args.eot < 1:
        raise InputError("--pgd-steps and --eot must be >= 1 and --bpda-steps >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, classifier = load_default(args.device)
    x, y = load_test_slice(args.n)
    x, y = x.to(args.device), y.to(args.device)
    attack = AttackSettings(eps=args.eps, pgd_steps=args.pgd_steps, bpda_steps=args.bpda_steps,
                            eot=args.eot, seed=args.seed)
    print(f"mimicfast demo: {args.n} Fashion-MNIST test images, eps={args.eps:g} (Linf), {args.steps} purifier "
          f"steps, seed {args.seed}")
    bare, x_pgd = undefended(classifier, x, y, attack, progress=True)
    rows, grid_rows = {}, [("clean", x), (f"PGD eps={args.eps:g}", x_pgd)]
    for name in args.preset:
        print(f"purifying with preset {name!r} ...", flush=True)
        acc, images = defended(model, classifier, x, y, x_pgd, name, args.steps, attack,
                               bpda=args.bpda_steps > 0, progress=True)
        rows[name] = {"accuracy": acc, "settings": settings_record(name, args.steps, attack)}
        grid_rows.append((f"{name}: purified PGD", images["purified_pgd"]))
        if "x_bpda" in images:
            grid_rows += [(f"{name}: BPDA+EOT", images["x_bpda"]), (f"{name}: purified", images["purified_bpda"])]
    wall = time.perf_counter() - t0
    print()
    print(format_table(bare, rows, args))
    record = {
        "n": args.n, "eps": args.eps, "seed": args.seed, "steps": args.steps, "device": str(args.device),
        "undefended": bare, "presets": rows, "wall_s": round(wall, 1),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "images": "first n images of mimicfast/data/fmnist_test_1000.npz (Fashion-MNIST test set)",
        "command": "mimicfast demo " + " ".join(_argv(args)),
    }
    (args.out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    save_grid(grid_rows, args.out / "demo.png")
    print(f"\nwrote {args.out / 'demo.png'} and {args.out / 'demo.json'} ({wall:.0f} s)")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    return [f"--n {args.n}", f"--eps {args.eps:g}", "--preset " + " ".join(args.preset), f"--steps {args.steps}",
            f"--pgd-steps {args.pgd_steps}", f"--bpda-steps {args.bpda_steps}", f"--eot {args.eot}",
            f"--seed {args.seed}"]


def format_table(bare: dict, rows: dict, args: argparse.Namespace) -> str:
    """The demo's accuracy table as text."""
    pct = lambda v: f"{100 * v:6.1f}%" if v is not None else "     -"  # noqa: E731
    lines = [
        f"{'':28s}{'clean':>10s}{'PGD':>10s}{'BPDA+EOT':>10s}",
        f"{'classifier, no defense':28s}{pct(bare['clean']):>10s}{pct(bare['pgd']):>10s}{'':>10s}",
    ]
    for name, row in rows.items():
        a = row["accuracy"]
        label = f"+ purifier ({name}, T={args.steps})"
        lines.append(f"{label:28s}{pct(a['standard']):>10s}{pct(a['pgd']):>10s}{pct(a.get('bpda_eot')):>10s}")
    lines.append(f"(accuracy on {args.n} images; PGD: {args.pgd_steps} steps against the bare classifier, "
                 f"i.e. ignoring the purifier; BPDA+EOT: {args.bpda_steps} steps x {args.eot} draws through "
                 f"the purifier; eps={args.eps:g})")
    return "\n".join(lines)


def save_grid(rows: list[tuple[str, torch.Tensor]], path: Path, max_cols: int = 16) -> None:
    """One labelled row of images per entry (``[N, 1, H, W]`` in [0, 1]), magnified for viewing."""
    n = min(max_cols, rows[0][1].shape[0])
    h, w = rows[0][1].shape[-2:]
    cell_h, cell_w = h * _ZOOM + 2, w * _ZOOM + 2
    canvas = Image.new("L", (_LABEL_W + n * cell_w, len(rows) * cell_h), color=255)
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * cell_h + cell_h // 2 - 6), label, fill=0)
        pixels = (images[:n, 0].detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for c in range(n):
            tile = Image.fromarray(pixels[c]).resize((w * _ZOOM, h * _ZOOM), Image.NEAREST)
            canvas.paste(tile, (_LABEL_W + c * cell_w + 1, r * cell_h + 1))
    canvas.save(path)
