"""The model card's plot: clean accuracy through the purifier against T and against CPU time per image.

Reads the JSON files written by ``python -m mimicfast.train.purified --out ...`` (one per model and T) and draws,
for each model and preset, the accuracy averaged over draws (solid) and correct on every draw (dashed), with the
bare classifier as a dotted line. Needs matplotlib, which the package does not depend on::

    python docs/img/plot_purified_accuracy.py --out docs/img/purified_accuracy.png \\
        "tuned scales=runs/measure/tuned_t*.json" "released at 3000=runs/measure/r3000_t*.json"
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402

from mimicfast.atomic import write_atomic  # noqa: E402

PRESETS = ("paper", "released")


def _load(pattern: str) -> list[dict]:
    """The measurement JSONs matching ``pattern``, by T."""
    runs = (json.loads(Path(p).read_text(encoding="utf-8")) for p in glob.glob(pattern))
    return sorted(runs, key=lambda r: r["steps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("series", nargs="+", help="LABEL=GLOB of purified-accuracy JSON files (one per T)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    bares: set[float] = set()
    for spec in args.series:
        label, pattern = spec.split("=", 1)
        runs = _load(pattern)
        for preset in PRESETS:
            rows = [r for r in runs if preset in r]
            if not rows:
                continue
            colour = next(colours)
            ts = [r["steps"] for r in rows]
            secs = [r[preset]["cpu_s_per_image"] for r in rows]
            for ax, xs in ((ax_t, ts), (ax_s, secs)):
                ax.plot(xs, [100 * r[preset]["mean"] for r in rows], "o-", color=colour,
                        label=f"{label}, {preset}: mean over draws")
                ax.plot(xs, [100 * r[preset]["all_draws"] for r in rows], "s--", color=colour,
                        label=f"{label}, {preset}: correct on all draws")
        bare = 100 * next(r[p]["bare"] for r in runs for p in PRESETS if p in r)
        if bare not in bares:  # one line per classifier, however many series share it
            bares.add(bare)
            for ax in (ax_t, ax_s):
                ax.axhline(bare, color="grey", linestyle=":", linewidth=1)
                ax.annotate(f"bare classifier {bare:.1f}%", (0.01, bare - 3.5), xycoords=("axes fraction", "data"),
                            fontsize=7, color="grey")
    n, draws = runs[0]["n"], runs[0]["draws"]
    ax_t.set(xscale="log", xlabel="reverse steps T", ylabel=f"clean accuracy through the purifier (%), {n} images")
    ax_s.set(xscale="log", xlabel="purifier CPU time per image (s, 1 thread)")
    ax_t.set_title(f"accuracy against T ({draws} draws per image)", fontsize=10)
    ax_s.set_title("accuracy against CPU time per image", fontsize=10)
    ts = sorted({r["steps"] for spec in args.series for r in _load(spec.split("=", 1)[1])})
    ax_t.set_xticks(ts, [str(t) for t in ts])
    ax_t.minorticks_off()
    ax_s.set_xticks([0.03, 0.05, 0.1, 0.2, 0.5], ["0.03", "0.05", "0.1", "0.2", "0.5"])
    ax_s.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (ax_t, ax_s):
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    ax_s.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    write_atomic(args.out, lambda f: fig.savefig(f, format="png", dpi=110))


if __name__ == "__main__":
    main()
