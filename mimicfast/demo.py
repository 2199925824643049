"""``mimicfast demo``: attack the bundled Fashion-MNIST classifier, purify, and show by how much it helps.

A small ``mimicfast.evaluate.run`` on the first ``--n`` bundled test images: the bare classifier and the
classifier behind the purifier (each ``--preset``), on clean images, under PGD against the bare classifier
(``transfer``: an attack that ignores the purifier) and under PGD with EOT through the purifier (BPDA gradients).
The table leads with the single submission per image (the attacker submits one input, chosen on its own draws),
judged with the defense's own seed, worst of ``--draws`` scoring draws and majority of them. It prints the table
and writes ``demo.png``, ``demo.json`` and the evaluation folder ``eval/`` (resumable) to ``--out``; the table
covers exactly the images, presets and draws of this command, whatever an earlier run left in ``eval/``.

The table is reproducible: fixed torch threads (``--threads``, default 1), deterministic algorithms, and every
random number from per-image seeds; the same command gives the same table with the same ops backend, thread
count, torch build and CPU family (another CPU family may round a convolution differently).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from mimicfast.errors import InputError
from mimicfast.progress import show_progress

DEFAULT_N = 32
DEFAULT_STEPS = 20
DEFAULT_EPS = 0.1
_ZOOM = 2  # grid pixels per image pixel
_LABEL_W = 250
_TITLE_H = 34
_COLS = 16  # images shown: a multiple of the evaluation's batch size (8)
_RIGHT, _WRONG = (0, 160, 0), (220, 0, 0)


def add_parser(subparsers) -> None:
    """Register ``mimicfast demo``."""
    p = subparsers.add_parser("demo", help="attack, purify and score the bundled Fashion-MNIST classifier",
                              description=__doc__.replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"test images (default: {DEFAULT_N}, max 1000)")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS,
                   help=f"Linf radius in [0, 1] pixel units (default: {DEFAULT_EPS}, the usual Fashion-MNIST budget)")
    p.add_argument("--preset", nargs="+", default=["paper", "released"], help="presets (default: paper released)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"reverse steps of the purifier, also inside the attack (default: {DEFAULT_STEPS})")
    p.add_argument("--attack-steps", type=int, default=5, help="iterations of each attack (default: 5)")
    p.add_argument("--eot", type=int, default=1,
                   help="defense draws averaged per gradient of the attack through the purifier (default: 1)")
    p.add_argument("--draws", type=int, default=3, help="scoring draws per image for the protocols (default: 3)")
    p.add_argument("--choice-draws", type=int, default=3,
                   help="attack-side draws on which the attacker picks its single submission (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; the table is reproducible for a given count (default: 1)")
    p.add_argument("--out", type=Path, default=Path("mimicfast-demo"), help="output folder (default: mimicfast-demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    import torch

    from mimicfast.atomic import write_text
    from mimicfast.evaluate.prepare import build_spec
    from mimicfast.evaluate.runner import run as evaluate

    if not 1 <= args.n <= 1000:
        raise InputError(f"--n must be in [1, 1000], got {args.n}")
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    spec = build_spec(preset=args.preset, steps=args.steps, defense="none,purifier", attacks="clean,transfer,pgd",
                      eps=args.eps, attack_steps=args.attack_steps, eot=args.eot, draws=args.draws,
                      choice_draws=args.choice_draws, n=args.n, seed=args.seed, threads=args.threads,
                      progress=show_progress())
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    print(f"mimicfast demo: {args.n} Fashion-MNIST test images, Linf eps={args.eps:g}, T={args.steps}, "
          f"{args.draws} scoring draws, {args.choice_draws} choice draws, seed {args.seed}, {args.threads} thread(s)",
          flush=True)
    evaluate(spec, args.out / "eval")
    summary = ran(args.out / "eval", spec)
    wall = time.perf_counter() - t0
    print(f"\n{table(summary)}\n\nAccuracy [95% Wilson interval] (images). transfer: PGD against the bare classifier; "
          f"pgd: PGD through the purifier with BPDA gradients; each label gives the iterations (it) and the defense "
          f"draws per gradient (EOT).\n\n{meanings(args.draws)}")
    record = {"summary": summary, "wall_s": round(wall, 1), "command": "mimicfast demo " + " ".join(_argv(args)),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "backend": spec.backend},
              "images": "first n images of mimicfast/data/fmnist_test_1000.npz (Fashion-MNIST test set)"}
    write_text(args.out / "demo.json", json.dumps(record, indent=2) + "\n")
    save_grid(args, args.out / "demo.png")
    print(f"\nwrote {args.out / 'demo.png'}, {args.out / 'demo.json'} and {args.out / 'eval'} ({wall:.0f} s)")
    return 0


def ran(out: Path, spec) -> dict:
    """The summary of what ``spec`` ran in folder ``out``: its defenses and attacks on its first n images, with
    its draws, whatever else the folder holds."""
    from mimicfast.evaluate.rows import read_rows
    from mimicfast.evaluate.store import read_settings
    from mimicfast.evaluate.summary import summarize_rows

    settings = read_settings(out)
    runs = {label: [spec.attack_label(a, p) for a in spec.attacks_for(p)] for label, p in spec.defenses}
    mine = {**settings, "runs": runs, "labels": settings["labels"][: spec.n], "draws": spec.draws,
            "choice_draws": spec.choice_draws}
    rows, notes = read_rows(out, mine)
    return {"rows": summarize_rows(rows, mine), "settings": mine, "notes": notes}


def table(summary: dict) -> str:
    """The demo's tables (:func:`mimicfast.evaluate.summary.format_markdown`)."""
    from mimicfast.evaluate.summary import format_markdown

    return format_markdown(summary["rows"], summary["settings"]["draws"])


def meanings(draws: int) -> str:
    from mimicfast.evaluate.summary import meanings as explain

    return explain(draws)


def _argv(args: argparse.Namespace) -> list[str]:
    return [f"--n {args.n}", f"--eps {args.eps:g}", "--preset " + " ".join(args.preset), f"--steps {args.steps}",
            f"--attack-steps {args.attack_steps}", f"--eot {args.eot}", f"--draws {args.draws}",
            f"--choice-draws {args.choice_draws}", f"--seed {args.seed}", f"--threads {args.threads}"]


def grid_rows(args: argparse.Namespace) -> list[tuple[str, object, list[bool]]]:
    """``(label, images [k, 1, H, W], right/wrong per image)`` for the first images of the demo's evaluation.

    Every image is marked by the classifier's answer on it: adversarial rows show what the bare classifier sees;
    purified rows show the defense's own draw (draw 0: the seeds and batches the table scored, so the marks are
    the table's rows).
    """
    import torch

    from mimicfast.api import Purifier
    from mimicfast.default import load_default_unet, load_test_slice
    from mimicfast.evaluate.seeds import purpose_seeds
    from mimicfast.evaluate.spec import attack_label, defense_label
    from mimicfast.evaluate.store import adv_path, load_adv, read_settings

    out = args.out / "eval"
    settings = read_settings(out)
    identity = settings["identity"]
    batch = identity["batch_size"]
    k = min(_COLS, args.n)
    # A batch's saved examples cover the images of the run that attacked it last: this command's n, or the
    # folder's largest n when an earlier run attacked more images.
    sizes = list(dict.fromkeys((args.n, len(settings["labels"]))))
    x_all, _ = load_test_slice(max(sizes))
    x, labels = x_all[:k], load_test_slice(k)[1]

    def adversarial(defense: str, attack: str) -> torch.Tensor:
        parts = []
        for b, start in enumerate(range(0, k, batch)):
            path, notes = adv_path(out, defense, attack, b), []
            for size in sizes:
                idx = list(range(start, min(start + batch, size)))
                saved, note = load_adv(path, settings["spec_id"], idx, x_all[idx], args.eps, "Linf")
                if saved is not None:
                    parts.append(saved)
                    break
                notes.append(note)
            else:
                raise InputError(f"{out}: no usable adversarial examples of {defense} / {attack} ({notes[0]})")
        return torch.cat(parts)[:k]

    def label(attack: str, purified: bool) -> str:
        return attack_label(attack, purified, identity["grad"], identity["attack_steps"], identity["eot"])

    net = load_default_unet()
    transfer = adversarial("none", label("transfer", False))
    out_rows = [("clean image", x, _right(x, labels)),
                ("PGD on the bare classifier (transfer)", transfer, _right(transfer, labels))]
    for name in args.preset:
        purifier = Purifier(net, preset=name, steps=args.steps)
        defense = defense_label(purifier.preset)
        adaptive = adversarial(defense, label("pgd", True))

        def purify(images: torch.Tensor, purifier: Purifier = purifier) -> torch.Tensor:
            # The table's batches (k is n or a multiple of the batch size) and draw-0 seeds: the images it scored.
            return torch.cat([purifier(images[s : s + batch], seed=purpose_seeds(
                args.seed, "defense", range(s, min(s + batch, k)), 0)) for s in range(0, k, batch)])

        shown = {"clean": purify(x), "transfer": purify(transfer), "adaptive": purify(adaptive)}
        out_rows += [
            (f"{defense}: purified clean", shown["clean"], _right(shown["clean"], labels)),
            (f"{defense}: purified transfer", shown["transfer"], _right(shown["transfer"], labels)),
            (f"{defense}: PGD-EOT through it (BPDA)", adaptive, _right(adaptive, labels)),
            (f"{defense}: purified PGD-EOT", shown["adaptive"], _right(shown["adaptive"], labels)),
        ]
    return out_rows


def _right(images, labels) -> list[bool]:
    """Whether the bundled classifier gets each of ``images`` right."""
    import torch

    from mimicfast.default import load_default_classifier

    with torch.no_grad():
        return (load_default_classifier()(images).argmax(1) == labels).tolist()


def save_grid(args: argparse.Namespace, path: Path) -> None:
    """demo.png: a title, then one labelled row of images per entry of :func:`grid_rows`, each image framed
    green (classified right) or red (wrong)."""
    import torch
    from PIL import Image, ImageDraw

    from mimicfast.atomic import write_atomic

    rows = grid_rows(args)
    k = rows[0][1].shape[0]
    h, w = rows[0][1].shape[-2:]
    cell_h, cell_w = h * _ZOOM + 6, w * _ZOOM + 6
    canvas = Image.new("RGB", (_LABEL_W + k * cell_w, _TITLE_H + len(rows) * cell_h), color=(255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), f"mimicfast demo: bundled Fashion-MNIST, Linf eps={args.eps:g}, T={args.steps}, "
                      f"seed {args.seed}, first {k} images", fill=(0, 0, 0))
    draw.text((4, 17), "frame: green = classified right, red = wrong (adversarial rows: the bare classifier; "
                       "purified rows: the classifier after the defense's own draw)", fill=(0, 0, 0))
    for r, (label, images, right) in enumerate(rows):
        top = _TITLE_H + r * cell_h
        draw.text((4, top + cell_h // 2 - 6), label, fill=(0, 0, 0))
        pixels = (images[:, 0].detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for c in range(k):
            left = _LABEL_W + c * cell_w
            draw.rectangle((left, top, left + cell_w - 3, top + cell_h - 3), fill=_RIGHT if right[c] else _WRONG)
            tile = Image.fromarray(pixels[c]).resize((w * _ZOOM, h * _ZOOM), Image.NEAREST).convert("RGB")
            canvas.paste(tile, (left + 2, top + 2))
    write_atomic(path, lambda f: canvas.save(f, format="PNG"))
