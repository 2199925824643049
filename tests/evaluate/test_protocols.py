"""Protocols (own seed, worst of N, majority of N), Wilson intervals and per-image seeds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimicfast.evaluate.protocols import image_correct, wilson_interval
from mimicfast.evaluate.seeds import PURPOSES, DefendedModel, derive_seed, image_seeds
from mimicfast.evaluate.summary import ALL_ATTACKS, summarize_rows


def test_wilson_interval_known_values():
    # Reference values: scipy.stats.binomtest(k, n).proportion_ci(method="wilson").
    lo, hi = wilson_interval(32, 64)
    assert lo == pytest.approx(0.3810209474, abs=1e-9) and hi == pytest.approx(0.6189790526, abs=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("preds", "own", "worst", "majority"), [
    ([3, 3, 3], True, True, True),
    ([3, 1, 3], True, False, True),
    ([1, 3, 3], False, False, True),
    ([3, 1, 2], True, False, False),  # 1 vote each: no strict majority
    ([3, 1, 1], True, False, False),
    ([3, 3, 1, 1], True, False, False),  # a tie counts as wrong
])
def test_image_correct(preds, own, worst, majority):
    assert image_correct(preds, 3, "own") is own
    assert image_correct(preds, 3, "worst") is worst
    assert image_correct(preds, 3, "majority") is majority


def test_summary_counts_only_images_with_all_draws():
    rows = [{"defense": "paper", "attack": "pgd (bpda)", "index": i, "draw": d, "label": 0, "pred": p}
            for i, preds in enumerate([[0, 0, 0], [0, 1, 0], [1, 1, 1]]) for d, p in enumerate(preds)]
    rows += [{"defense": "paper", "attack": "pgd (bpda)", "index": 3, "draw": 0, "label": 0, "pred": 0}]
    rows += [{"defense": "none", "attack": "clean", "index": i, "draw": 0, "label": 0, "pred": i % 2}
             for i in range(4)]
    out = {(r["defense"], r["protocol"]): r for r in summarize_rows(rows, draws=3)}
    assert out["paper", "own"]["n"] == 3 and out["paper", "own"]["accuracy"] == pytest.approx(2 / 3)
    assert out["paper", "worst"]["accuracy"] == pytest.approx(1 / 3)
    assert out["paper", "majority"]["accuracy"] == pytest.approx(2 / 3)
    assert out["none", "worst"]["n"] == 4 and out["none", "worst"]["accuracy"] == 0.5  # bare classifier: 1 draw
    assert set(out["paper", "own"]) == {"defense", "attack", "protocol", "accuracy", "n", "ci95"}


def test_all_attacks_row_counts_an_image_only_if_it_survives_every_attack():
    preds = {"pgd (bpda)": [[0, 0], [0, 0], [1, 0]], "cw (bpda)": [[0, 0], [0, 1], [0, 0]]}
    rows = [{"defense": "paper", "attack": a, "index": i, "draw": d, "label": 0, "pred": p}
            for a, per_image in preds.items() for i, draws in enumerate(per_image) for d, p in enumerate(draws)]
    rows += [{"defense": "paper", "attack": "clean", "index": i, "draw": d, "label": 0, "pred": 1}
             for i in range(3) for d in range(2)]
    rows.append({"defense": "paper", "attack": "pgd (bpda)", "index": 3, "draw": 0, "label": 0, "pred": 0})
    out = {(r["attack"], r["protocol"]): r for r in summarize_rows(rows, draws=2)}
    assert out[ALL_ATTACKS, "own"]["n"] == 3  # image 3 is not finished under both attacks
    assert out[ALL_ATTACKS, "own"]["accuracy"] == pytest.approx(2 / 3)  # image 2 falls to pgd's draw 0
    assert out[ALL_ATTACKS, "worst"]["accuracy"] == pytest.approx(1 / 3)  # only image 0 survives every draw
    assert ("clean", "own") in out and out["clean", "own"]["accuracy"] == 0  # clean is not an attack


def test_seed_purposes_never_overlap_and_depend_only_on_the_image():
    seen = {p: {derive_seed(0, i, p, c) for i in range(50) for c in range(20)} for p in PURPOSES}
    for p, seeds in seen.items():
        assert len(seeds) == 1000
        assert all(s >> 56 == PURPOSES[p] for s in seeds)
    assert image_seeds(7, [5, 9], "eot", 3) == [derive_seed(7, 5, "eot", 3), derive_seed(7, 9, "eot", 3)]
    assert derive_seed(7, 5, "eot", 3) != derive_seed(8, 5, "eot", 3)


class _RecordSeeds(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, seed):
        self.calls.append(list(seed))
        return x


def test_defended_model_gives_each_row_its_own_draws_per_call():
    purifier = _RecordSeeds()
    model = DefendedModel(purifier, nn.Flatten(), seed=1, indices=[4, 7])
    x = torch.zeros(2, 1, 2, 2)
    model(x)
    model(x)
    model(torch.cat([x, x]))  # an attack stacking two copies = two calls
    assert purifier.calls[0] == image_seeds(1, [4, 7], "eot", 0)
    assert purifier.calls[1] == image_seeds(1, [4, 7], "eot", 1)
    assert purifier.calls[2] == image_seeds(1, [4, 7], "eot", 2) + image_seeds(1, [4, 7], "eot", 3)
    # Image 7's draws are the same whatever its batch-mates.
    alone = _RecordSeeds()
    DefendedModel(alone, nn.Flatten(), seed=1, indices=[7])(x[:1])
    assert alone.calls[0] == [purifier.calls[0][1]]
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.zeros(3, 1, 2, 2))
