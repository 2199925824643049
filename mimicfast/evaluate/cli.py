"""``mimicfast eval``: the command line of :func:`mimicfast.evaluate.run` and :func:`mimicfast.evaluate.summarize`.

Imports nothing heavy at module level: ``mimicfast --help`` builds this parser without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mimicfast.errors import InputError
from mimicfast.progress import show_progress

DESCRIPTION = """\
Robust accuracy of a classifier behind the MimicDiffusion purifier.

For each defense (the purifier with each --preset; --defense none for the bare classifier), each attack and each
image: make the adversarial example, classify purifier(x_adv) with --draws scoring draws and --choice-draws
attack-side draws, and append one row per draw to OUT/rows/. The summary (OUT/summary.json, OUT/summary.md)
leads with the single submission: per image the attacker submits one input, chosen among the clean image and
every attack's output on its own draws only, scored with the defense's own seed, worst of N scoring draws and
majority of N; then every defense and attack under the same protocols, each with its 95% Wilson interval and
image count, and the all-attacks row (an image must survive every attack on the scoring draws: a pessimistic
bound).

One OUT holds one run identity (the spec id: model, classifier and data content, T, eps, norm, attack budget,
grad, tau, seed, batch size, device type, versions). A rerun with the same identity skips finished batches and
may add defenses, attacks, images and draws; another identity into the same OUT is refused, naming the first
difference. Rows carry a running digest: edited, removed or injected rows are reported and not counted. Under
torchrun (torchrun --nproc_per_node=N -m mimicfast eval -n 64 ...; torchrun needs the short -n) the batches are
sharded over the ranks; every image has its own seeds, so the rows equal those of a single process.

Attacks: clean (no attack), transfer (PGD on the bare classifier), pgd (PGD with EOT through the purifier),
apgd-ce, apgd-dlr, aa-rand (APGD-CE then APGD-DLR with EOT), cw (Carlini-Wagner L2). Attacks through the
purifier use the gradient mode --grad.
"""


def _override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON (numbers, true/false, null, lists), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if value in ("None", "none"):
        return key, None
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(subparsers) -> None:
    """Register ``mimicfast eval``."""
    p = subparsers.add_parser("eval", help="robust accuracy under attack, resumable and shardable with torchrun",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and models")
    g.add_argument("--data", type=Path, default=None,
                   help="images with labels: .pt ({'images', 'labels'}), .npy + --labels, or a folder of "
                        "pictures + --labels (default: the bundled Fashion-MNIST test images)")
    g.add_argument("--labels", type=Path, default=None,
                   help="labels file: .npy/.pt, or text (one label per line, or 'file-name label')")
    g.add_argument("--pad", action="store_true", help="zero-pad smaller images to the model's size")
    g.add_argument("--classifier", type=Path, default=None,
                   help="TorchScript file, or a state dict with --classifier-class (default: the bundled CNN)")
    g.add_argument("--classifier-class", default=None, metavar="MODULE:CLASS",
                   help="class of a state-dict --classifier, e.g. mypkg.nets:ResNet18")
    g.add_argument("--trust-classifier-code", action="store_true",
                   help="allow a classifier that runs code when loaded: a TorchScript file or --classifier-class "
                        "(only for files and modules you trust)")
    g.add_argument("--classifier-kwargs", type=json.loads, default=None, metavar="JSON",
                   help="constructor arguments of --classifier-class as JSON")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="diffusion model, any checkpoint mimicfast.load accepts (default: the bundled UNet)")
    g.add_argument("--config", default=None, help="model config name when not auto-detected")
    g = p.add_argument_group("defense")
    g.add_argument("--defense", default="purifier",
                   help="purifier, none (the bare classifier) or none,purifier (default: purifier)")
    g.add_argument("--preset", default="paper", help="preset(s), comma-separated, e.g. paper,released "
                                                     "(default: paper)")
    g.add_argument("--steps", type=int, default=None,
                   help="reverse steps T (default: the package's rule, mimicfast.presets.default_steps: 100 for "
                        "the bundled 32x32 model)")
    g.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set scale=0.003 --set window=None (repeatable)")
    g.add_argument("--draws", type=int, default=5,
                   help="scoring draws per image for the worst-of-N and majority protocols (default: 5)")
    g.add_argument("--choice-draws", type=int, default=3,
                   help="attack-side draws per image and candidate on which the attacker picks its single "
                        "submission (disjoint from the scoring draws; default: 3)")
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default="clean,transfer,pgd",
                   help="comma-separated from clean,transfer,pgd,apgd-ce,apgd-dlr,aa-rand,cw "
                        "(default: clean,transfer,pgd)")
    g.add_argument("--eps", type=float, default=0.1, help="perturbation budget in [0, 1] pixel units (default: 0.1)")
    g.add_argument("--norm", default="Linf", choices=["Linf", "L2"], help="threat model (default: Linf)")
    g.add_argument("--attack-steps", type=int, default=10, help="iterations of every attack (default: 10)")
    g.add_argument("--eot", type=int, default=None,
                   help="defense draws averaged per attack gradient (default: each attack's own, aa-rand 20, "
                        "others 1)")
    g.add_argument("--grad", default="bpda", choices=["bpda", "full"],
                   help="gradient through the purifier: bpda (identity) or full (every reverse step, smooth "
                        "surrogate of sign) (default: bpda)")
    g.add_argument("--tau", type=float, default=None,
                   help="temperature of the tanh(u / tau) surrogate of sign in --grad full (default: the Purifier's)")
    g = p.add_argument_group("run")
    g.add_argument("--n", "-n", type=int, default=64,
                   help="first N images of the data (default: 64); under torchrun write -n (torchrun's own parser "
                        "reads --n as an abbreviation of its options)")
    g.add_argument("--seed", type=int, default=0, help="run seed; every per-image seed derives from it (default: 0)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="images per batch, the unit of resuming and sharding (default: 8)")
    g.add_argument("--out", type=Path, default=None, help="results folder (resumable)")
    g.add_argument("--summarize", type=Path, nargs="+", default=None, metavar="DIR",
                   help="only (re)write the summary of a folder; several folders of one run (same spec id) print "
                        "one pooled table, folders of different runs are refused")
    g.add_argument("--convergence", type=Path, nargs=2, default=None, metavar=("DIR_K", "DIR_2K"),
                   help="only compare one run at attack budget k and 2k (the folders' identities may differ only "
                        "in --attack-steps): every figure at k / 2k, and 'not converged, upper bound' where one "
                        "moves by more than 2 points")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``mimicfast eval``; returns the exit status."""
    if args.summarize is not None:
        from mimicfast.evaluate.summary import combined, report, summarize

        folders = args.summarize
        summary = summarize(folders[0]) if len(folders) == 1 else combined(folders)
        for note in summary["notes"]:
            print(f"note: {note}", file=sys.stderr)
        print(report(summary))
        return 0
    if args.convergence is not None:
        from mimicfast.evaluate.convergence import convergence, format_convergence
        from mimicfast.evaluate.store import read_settings

        rows = convergence(*args.convergence)
        print(format_convergence(rows, read_settings(args.convergence[0])["draws"]))
        return 0
    if args.out is None:
        raise InputError("--out DIR is required (or --summarize DIR, or --convergence DIR_K DIR_2K)")
    from mimicfast.evaluate.prepare import build_spec
    from mimicfast.evaluate.runner import run

    spec = build_spec(
        data=args.data, labels=args.labels, pad=args.pad, classifier=args.classifier,
        classifier_class=args.classifier_class, classifier_kwargs=args.classifier_kwargs,
        trust_classifier_code=args.trust_classifier_code, checkpoint=args.checkpoint, config=args.config,
        preset=args.preset.split(","), steps=args.steps, overrides=dict(args.overrides), defense=args.defense,
        attacks=args.attacks, eps=args.eps, norm=args.norm, attack_steps=args.attack_steps, eot=args.eot,
        grad=args.grad, tau=args.tau, draws=args.draws, choice_draws=args.choice_draws, n=args.n, seed=args.seed,
        batch_size=args.batch_size, device=args.device, threads=args.threads,
        progress=not args.no_progress and show_progress(),
    )
    summary = run(spec, args.out)
    if summary is not None:
        from mimicfast.evaluate.summary import report

        print(report(summary))
    return 0
