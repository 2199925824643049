"""Numbers for docs/MODEL_CARD.md: classifier test accuracy and its verdict on unconditional UNet samples.

Fashion-MNIST samples have no labels, so the proxy is the classifier's confidence: mean max-softmax, the share
of samples classified with confidence >= 0.9, and the entropy of the predicted-class histogram (diversity;
log(10) = 2.30 is uniform), side by side with the same numbers on real test images.

    python scripts/fmnist_model_card.py --n 500 --steps 100 --out docs/img/fmnist_samples.png
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mimicfast.default import load_default
from mimicfast.evaluate import accuracy
from mimicfast.train.data import CLASSES, fashion_mnist_tensors
from mimicfast.train.ddpm import sample_unconditional


def confidence_stats(classifier: torch.nn.Module, x: torch.Tensor) -> dict:
    """Mean max-softmax, share with max-softmax >= 0.9, entropy and histogram of predicted classes."""
    with torch.no_grad():
        probs = torch.cat([classifier(x[i : i + 500]).softmax(1) for i in range(0, len(x), 500)])
    conf, pred = probs.max(1)
    hist = torch.bincount(pred, minlength=10).double() / len(x)
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum().item()
    return {"mean_confidence": conf.mean().item(), "confident_0.9": (conf >= 0.9).double().mean().item(),
            "class_entropy": entropy, "class_histogram": dict(zip(CLASSES, hist.tolist(), strict=True))}


def save_tiles(images: torch.Tensor, path: str, per_row: int = 8, zoom: int = 3) -> None:
    """A PNG of ``images`` ([N, 1, H, W] in [0, 1]) tiled ``per_row`` to a row, each enlarged ``zoom`` times."""
    from PIL import Image

    from mimicfast.atomic import write_atomic

    n, _, h, w = images.shape
    rows = -(-n // per_row)
    tiles = torch.zeros(rows * per_row, h, w)
    tiles[:n] = images[:, 0].clamp(0, 1)
    grid = tiles.view(rows, per_row, h, w).permute(0, 2, 1, 3).reshape(rows * h, per_row * w)
    picture = Image.fromarray((grid * 255).round().to(torch.uint8).numpy()).resize(
        (per_row * w * zoom, rows * h * zoom), Image.NEAREST)
    write_atomic(path, lambda f: picture.save(f, format="PNG"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="PNG grid of the first 64 samples")
    args = parser.parse_args()
    unet, classifier = load_default()
    x_test, y_test = fashion_mnist_tensors("test")
    t0 = time.perf_counter()
    samples = sample_unconditional(unet, args.n, args.steps, args.seed, progress=True)
    result = {
        "classifier_test_accuracy_10000": accuracy(classifier, x_test, y_test),
        "samples": {"n": args.n, "steps": args.steps, "seed": args.seed,
                    "sampling_wall_s": time.perf_counter() - t0, **confidence_stats(classifier, samples)},
        "real_test_images": {"n": args.n, **confidence_stats(classifier, x_test[: args.n])},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        save_tiles(samples[:64], args.out)


if __name__ == "__main__":
    main()
