"""How well a (UNet, classifier) pair keeps clean images correct through the purifier: the bundled model's yardstick.

For each preset, every image is purified ``draws`` times with independent seeds and classified; the result is the
accuracy averaged over draws, the share of images correct on every draw, and the purifier's CPU time per image::

    python -m mimicfast.train.purified --n 64 --steps 20 --draws 5 --out runs/measure/shipped_t20.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mimicfast.api import Purifier
from mimicfast.atomic import write_text
from mimicfast.default import CLASSIFIER_PATH, UNET_PATH, load_default_classifier, load_default_unet, load_test_slice
from mimicfast.evaluate import accuracy
from mimicfast.evaluate.seeds import purpose_seeds

__all__ = ["purified_clean_accuracy"]


@torch.no_grad()
def purified_clean_accuracy(unet: torch.nn.Module, classifier: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                            preset: str = "paper", steps: int = 20, draws: int = 5, seed: int = 0,
                            **overrides) -> dict:
    """Clean accuracy of ``classifier`` on ``purify(x)`` over ``draws`` independent purifications.

    Draw ``d`` purifies image ``i`` with the seed of ``mimicfast eval``'s scoring draw ``d``
    (:func:`mimicfast.evaluate.seeds.purpose_seeds` ``(seed, "defense", [i], d)``), so a draw's result does not
    depend on the other images, and "all_draws" is the evaluator's clean worst-of-N, draw 0 its own-seed row.
    Returns ``{"bare", "mean", "all_draws", "per_draw", "cpu_s_per_image", "scale"}``: accuracies in [0, 1], the
    purifier's CPU time per image (this process) and the guidance scale it ran at.
    """
    classifier.eval()
    purifier = Purifier(unet, preset=preset, steps=steps, **overrides)
    correct = torch.ones(len(y), dtype=torch.bool)
    per_draw, cpu = [], 0.0
    for d in range(draws):
        seeds = purpose_seeds(seed, "defense", range(len(y)), d)
        t0 = time.process_time()
        x_pur = purifier(x, seed=seeds)
        cpu += time.process_time() - t0
        ok = classifier(x_pur).argmax(1) == y
        per_draw.append(ok.double().mean().item())
        correct &= ok
    return {"bare": accuracy(classifier, x, y), "mean": sum(per_draw) / draws,
            "all_draws": correct.double().mean().item(), "per_draw": per_draw,
            "cpu_s_per_image": cpu / (draws * len(y)), "scale": purifier.preset.scale}


def main(argv: list[str] | None = None) -> int:
    """Command line: measure both presets and print (and optionally write) the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", type=Path, default=UNET_PATH)
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER_PATH)
    parser.add_argument("--n", type=int, default=64, help="the first n bundled test images")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=["paper", "released"])
    parser.add_argument("--scale", type=float, default=None, help="override the presets' guidance scale")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    unet, classifier = load_default_unet(path=args.unet), load_default_classifier(path=args.classifier)
    x, y = load_test_slice(args.n)
    overrides = {} if args.scale is None else {"scale": args.scale}
    result = {"unet": str(args.unet), "classifier": str(args.classifier), "n": args.n, "steps": args.steps,
              "draws": args.draws, "seed": args.seed, **overrides}
    for preset in args.presets:
        result[preset] = purified_clean_accuracy(unet, classifier, x, y, preset, args.steps, args.draws, args.seed,
                                                 **overrides)
        print(preset, json.dumps(result[preset]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
