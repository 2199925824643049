"""bf16 autocast vs fp32 on the fast path: standard and robust accuracy of the bundled Fashion-MNIST pair.

The protocol of ``tests/fast/test_fast_path.py::test_bf16_accuracy_of_the_bundled_model_within_noise_of_fp32``
(the GPU test), runnable on any device: the first ``--n`` bundled test images, PGD-Linf (eps 0.1, 20 steps)
against the bare classifier, the ``paper`` preset at ``--steps``, seeds 0..n-1, the same images, seeds and
adversarial examples for both precisions. Prints each accuracy, how many images the two precisions classify
differently, and the test's bound ``3 * sqrt(2 p (1 - p) / n) + 1 / n`` at the fp32 accuracy p.

    python scripts/bf16_accuracy.py --n 256 --steps 100 --device cpu
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mimicfast.attacks import pgd
from mimicfast.default import load_default, load_test_slice
from mimicfast.fast import purify_batch_fast
from mimicfast.presets import get_preset
from mimicfast.sampling import as_denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64, help="images per sampler call (does not change results)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model, classifier = load_default(args.device)
    x, labels = load_test_slice(args.n)
    x, labels = x.to(args.device), labels.to(args.device)
    x_adv = pgd(classifier, x, labels, eps=0.1, steps=20)
    denoiser = as_denoiser(model).to(args.device)
    preset = get_preset("paper").replace(steps=args.steps)
    seeds = list(range(args.n))

    def correct(images: torch.Tensor, autocast: str | None) -> torch.Tensor:
        start = time.perf_counter()
        purified = torch.cat([
            purify_batch_fast(denoiser, images[i : i + args.batch] * 2 - 1, preset, seeds[i : i + args.batch],
                              autocast=autocast)
            for i in range(0, args.n, args.batch)
        ])  # fmt: skip
        with torch.no_grad():
            pred = classifier(((purified + 1) / 2).clamp(0, 1)).argmax(1)
        print(f"  {autocast or 'fp32'}: {time.perf_counter() - start:.1f} s", flush=True)
        return pred == labels

    print(f"device {args.device}, torch {torch.__version__}, n {args.n}, paper preset T = {args.steps}")
    for name, images in (("clean", x), ("PGD (eps 0.1, 20 steps, bare classifier)", x_adv)):
        fp32, bf16 = correct(images, None), correct(images, "bf16")
        p32, p16 = fp32.float().mean().item(), bf16.float().mean().item()
        bound = 3 * math.sqrt(2 * p32 * (1 - p32) / args.n) + 1 / args.n
        print(
            f"{name}: fp32 {p32:.1%}, bf16 {p16:.1%}, |difference| {abs(p16 - p32):.1%} (bound {bound:.1%}), "
            f"classified differently: {int((fp32 != bf16).sum())} of {args.n}",
            flush=True,
        )


if __name__ == "__main__":
    main()
