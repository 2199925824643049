"""bf16 autocast on the CPU, speed and accuracy: the bundled Fashion-MNIST model purified in fp32 and under bf16
autocast, through the public API (``mimicfast.purify(..., fast=True, autocast=None | "bf16")``).

Per preset (paper, released): the first ``N`` bundled test images (default 64), T = 20, ``DRAWS`` draws (default
5; draw d gives image i the seed ``d * N + i``, so no two purifications share noise), the same images and seeds
for both precisions. Reported: the bundled classifier's clean accuracy on the purified images per draw and over
all draws for each precision, their difference, how many purifications are classified correctly in one precision only,
the classifier's accuracy on the images before purification, and the end-to-end time ratio fp32 / bf16 (the
median over draws of the ratio within a draw, on the process's CPU time; the two precisions alternate which runs
first). Ratios only: the CPU is named, absolute times are not reported.

About 2 x 640 purifications of 32x32 at T = 20, a few minutes on one core, so it runs only when asked:
``MIMICFAST_BENCH_ACCURACY=1 OMP_NUM_THREADS=1 pytest -s benches/bench_autocast_accuracy.py``
(``MIMICFAST_BENCH_ACCURACY_N`` / ``_DRAWS`` / ``_STEPS`` change the protocol).
"""

from __future__ import annotations

import datetime
import os
import statistics

import pytest
import torch

from benches.machine import cpu_name, cpu_seconds
from benches.rows import report

ASKED = os.environ.get("MIMICFAST_BENCH_ACCURACY") == "1"


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(f"MIMICFAST_BENCH_ACCURACY_{name}", str(default)))


@pytest.mark.skipif(not ASKED, reason="a few minutes of CPU: set MIMICFAST_BENCH_ACCURACY=1 to run it")
@pytest.mark.parametrize("preset_name", ["paper", "released"])
def test_autocast_accuracy_cpu(benchmark, preset_name: str) -> None:
    import mimicfast
    from mimicfast.default import load_default, load_test_slice

    n, draws, steps = _setting("N", 64), _setting("DRAWS", 5), _setting("STEPS", 20)
    model, classifier = load_default()
    x, labels = load_test_slice(n)
    precisions = {"fp32": None, "bf16": "bf16"}
    correct: dict[str, list[torch.Tensor]] = {p: [] for p in precisions}
    seconds: dict[str, list[float]] = {p: [] for p in precisions}

    def classify(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return classifier(images).argmax(1) == labels

    for autocast in precisions.values():  # first calls load kernels and allocate: not part of the timing
        mimicfast.purify(x[:2], model, preset=preset_name, steps=steps, seed=0, fast=True, autocast=autocast)

    def run_draws() -> None:
        for draw in range(draws):
            order = list(precisions) if draw % 2 == 0 else list(reversed(precisions))
            for precision in order:
                start = cpu_seconds()
                out = mimicfast.purify(x, model, preset=preset_name, steps=steps, seed=draw * n, fast=True,
                                       autocast=precisions[precision])  # fmt: skip
                seconds[precision].append(cpu_seconds() - start)
                correct[precision].append(classify(out))

    benchmark.pedantic(run_draws, rounds=1, iterations=1, warmup_rounds=0)

    per_draw = {p: [float(c.float().mean()) for c in correct[p]] for p in precisions}
    differences = [b - a for a, b in zip(per_draw["fp32"], per_draw["bf16"], strict=True)]
    ratios = [a / b for a, b in zip(seconds["fp32"], seconds["bf16"], strict=True)]
    row = dict(
        preset=preset_name, steps=steps, images=n, draws=draws,
        unpurified_accuracy=float(classify(x).float().mean()),
        fp32_accuracy=statistics.mean(per_draw["fp32"]), bf16_accuracy=statistics.mean(per_draw["bf16"]),
        bf16_minus_fp32=statistics.mean(differences),
        bf16_minus_fp32_per_draw=" ".join(f"{d:+.4f}" for d in differences),
        fp32_per_draw=" ".join(f"{a:.4f}" for a in per_draw["fp32"]),
        bf16_per_draw=" ".join(f"{a:.4f}" for a in per_draw["bf16"]),
        correct_in_one_precision_only=sum(int((a != b).sum()) for a, b in zip(*correct.values(), strict=True)),
        purifications_per_precision=n * draws,
        bf16_vs_fp32_time=statistics.median(ratios), bf16_vs_fp32_time_range=f"{min(ratios):.3f}-{max(ratios):.3f}",
        device=cpu_name(), torch=torch.__version__, date=datetime.date.today().isoformat(),
    )  # fmt: skip
    benchmark.extra_info.update(row)
    report("bench_autocast_accuracy", row)
