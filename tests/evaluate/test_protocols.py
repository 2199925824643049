"""Protocols (own seed, worst of N, majority of N), Wilson intervals and per-image seeds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimicfast.evaluate.protocols import image_correct, wilson_interval
from mimicfast.evaluate.seeds import PURPOSES, DefendedModel, purpose_seeds
from mimicfast.evaluate.summary import ALL_ATTACKS, CHOSEN, SUBMISSION, format_markdown, summarize_rows
from mimicfast.seeding import derive_seed


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


def _settings(runs: dict, labels: list[int], draws: int, choice_draws: int = 2) -> dict:
    return {"runs": runs, "labels": labels, "draws": draws, "choice_draws": choice_draws}


def _rows(defense: str, attack: str, preds: list[list[int]], role: str = "score", label: int = 0,
          p_true: float = 0.5) -> dict:
    return {(defense, attack, role, i, d): {"defense": defense, "attack": attack, "role": role, "index": i, "draw": d,
                                            "label": label, "pred": p, "p_true": p_true}
            for i, per_draw in enumerate(preds) for d, p in enumerate(per_draw)}


def test_summary_counts_only_images_with_all_draws():
    rows = _rows("paper", "pgd (bpda)", [[0, 0, 0], [0, 1, 0], [1, 1, 1], [0]])
    rows.update(_rows("none", "clean", [[i % 2] for i in range(4)]))
    settings = _settings({"none": ["clean"], "paper": ["pgd (bpda)"]}, [0] * 4, draws=3)
    out = {(r["defense"], r["attack"], r["protocol"]): r for r in summarize_rows(rows, settings)}
    assert out["paper", "pgd (bpda)", "own"]["n"] == 3
    assert out["paper", "pgd (bpda)", "own"]["accuracy"] == pytest.approx(2 / 3)
    assert out["paper", "pgd (bpda)", "worst"]["accuracy"] == pytest.approx(1 / 3)
    assert out["paper", "pgd (bpda)", "majority"]["accuracy"] == pytest.approx(2 / 3)
    assert out["none", "clean", "worst"]["n"] == 4 and out["none", "clean", "worst"]["accuracy"] == 0.5
    assert set(out["paper", "pgd (bpda)", "own"]) == {"defense", "attack", "protocol", "accuracy", "n", "ci95"}


def test_all_attacks_row_counts_an_image_only_if_it_survives_every_attack():
    rows = _rows("paper", "pgd (bpda)", [[0, 0], [0, 0], [1, 0], [0]])
    rows.update(_rows("paper", "cw (bpda)", [[0, 0], [0, 1], [0, 0]]))
    rows.update(_rows("paper", "clean", [[1, 1]] * 3))
    settings = _settings({"paper": ["clean", "pgd (bpda)", "cw (bpda)"]}, [0] * 4, draws=2)
    out = {(r["attack"], r["protocol"]): r for r in summarize_rows(rows, settings)}
    assert out[ALL_ATTACKS, "own"]["n"] == 3  # image 3 is not finished under both attacks
    assert out[ALL_ATTACKS, "own"]["accuracy"] == pytest.approx(2 / 3)  # image 2 falls to pgd's draw 0
    assert out[ALL_ATTACKS, "worst"]["accuracy"] == pytest.approx(1 / 3)  # only image 0 survives every draw
    assert out["clean", "own"]["accuracy"] == 0  # clean is not an attack


def test_submission_is_chosen_on_choice_draws_and_scored_on_scoring_draws():
    # Image 0: pgd fools every choice draw, cw none: the attacker submits pgd, which the scoring draws get right.
    # Image 1: both fool one choice draw; cw has the lower true-class probability: cw is submitted.
    # Image 2: clean and pgd fool every choice draw with the same probabilities: the first run (clean) is submitted.
    rows = {}
    rows.update(_rows("paper", "clean", [[0, 0], [0, 0], [0, 0]]))
    rows.update(_rows("paper", "pgd (bpda)", [[0, 0], [1, 1], [0, 1]]))
    rows.update(_rows("paper", "cw (bpda)", [[1, 1], [0, 0], [1, 1]]))
    choice = {"clean": [[0, 0], [0, 0], [1, 1]], "pgd (bpda)": [[1, 1], [1, 0], [1, 1]],
              "cw (bpda)": [[0, 0], [0, 1], [0, 1]]}
    for attack, preds in choice.items():
        rows.update(_rows("paper", attack, preds, role="choice", p_true=0.1 if attack == "cw (bpda)" else 0.5))
    settings = _settings({"paper": ["clean", "pgd (bpda)", "cw (bpda)"]}, [0] * 3, draws=2)
    out = {(r["attack"], r["protocol"]): r for r in summarize_rows(rows, settings)}
    # Submitted: pgd (right, right), cw (right, right), clean (right, right): all three images survive.
    assert out[CHOSEN, "worst"]["accuracy"] == 1 and out[CHOSEN, "worst"]["n"] == 3
    # The headline is the strongest single-submission strategy: always submitting pgd (or cw) leaves 1 of 3.
    assert out[SUBMISSION, "worst"]["accuracy"] == pytest.approx(1 / 3)
    assert out[SUBMISSION, "worst"]["strategy"] == "pgd (bpda)"  # the first of equals, in run order
    # The union row lets the attacker pick after the scoring draws: every image falls.
    assert out[ALL_ATTACKS, "worst"]["accuracy"] == 0
    # Without the choice rows of one candidate an image is not counted.
    del rows["paper", "cw (bpda)", "choice", 2, 1]
    out = {(r["attack"], r["protocol"]): r for r in summarize_rows(rows, settings)}
    assert out[CHOSEN, "own"]["n"] == 2


def test_the_headline_submission_is_never_weaker_than_a_fixed_attack():
    # The choice on the attacker's draws picks clean for every image, but always submitting pgd fools image 0.
    rows = {}
    rows.update(_rows("paper", "clean", [[0, 0], [0, 0]]))
    rows.update(_rows("paper", "pgd (bpda)", [[1, 1], [0, 0]]))
    for attack, preds in {"clean": [[1, 1], [1, 1]], "pgd (bpda)": [[0, 0], [0, 0]]}.items():
        rows.update(_rows("paper", attack, preds, role="choice"))
    settings = _settings({"paper": ["clean", "pgd (bpda)"]}, [0] * 2, draws=2)
    summary = summarize_rows(rows, settings)
    out = {(r["attack"], r["protocol"]): r for r in summary}
    for protocol in ("own", "worst", "majority"):
        assert out[CHOSEN, protocol]["accuracy"] == 1
        assert out[SUBMISSION, protocol]["accuracy"] == 0.5 and out[SUBMISSION, protocol]["strategy"] == "pgd (bpda)"
        assert all(out[SUBMISSION, protocol]["accuracy"] <= r["accuracy"] for (a, p), r in out.items()
                   if p == protocol and a != ALL_ATTACKS)
    assert "(n=2; pgd (bpda))" in format_markdown(summary, 2).splitlines()[2]


def test_strategies_compete_on_the_images_every_candidate_has_finished():
    # A run in progress: transfer is scored on 4 images, pgd on 2 so far. Always submitting transfer fools images 0
    # and 1 only, so over all 4 it would look like 50% wrong, over the 2 finished images 100% wrong.
    rows = {}
    rows.update(_rows("paper", "clean", [[0, 0]] * 4))
    rows.update(_rows("paper", "transfer", [[1, 1], [1, 1], [0, 0], [0, 0]]))
    rows.update(_rows("paper", "pgd (bpda)", [[0, 0], [0, 0]]))
    for attack, n in (("clean", 4), ("transfer", 4), ("pgd (bpda)", 2)):
        rows.update(_rows("paper", attack, [[0, 0]] * n, role="choice"))
    summary = summarize_rows(rows, _settings({"paper": ["clean", "transfer", "pgd (bpda)"]}, [0] * 4, draws=2))
    out = {(r["attack"], r["protocol"]): r for r in summary}
    assert out["transfer", "own"]["n"] == 4 and out["transfer", "own"]["accuracy"] == 0.5  # reported on its 4
    assert out[SUBMISSION, "own"]["n"] == 2 and out[SUBMISSION, "own"]["accuracy"] == 0.0
    assert out[SUBMISSION, "own"]["strategy"] == "transfer"


def test_seed_purposes_are_disjoint_streams_of_derive_seed():
    seen = {p: {s for i in range(50) for c in range(20) for s in purpose_seeds(0, p, [i], c)} for p in PURPOSES}
    assert all(len(seeds) == 1000 for seeds in seen.values())
    assert not set.intersection(*seen.values())
    assert purpose_seeds(7, "eot", [5, 9], 3) == [derive_seed(7, PURPOSES["eot"], 5, 3),
                                                  derive_seed(7, PURPOSES["eot"], 9, 3)]
    assert purpose_seeds(7, "eot", [5], 3) != purpose_seeds(8, "eot", [5], 3)
    assert len(set(PURPOSES.values())) == len(PURPOSES)


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
    assert purifier.calls[0] == purpose_seeds(1, "eot", [4, 7], 0)
    assert purifier.calls[1] == purpose_seeds(1, "eot", [4, 7], 1)
    assert purifier.calls[2] == purpose_seeds(1, "eot", [4, 7], 2) + purpose_seeds(1, "eot", [4, 7], 3)
    # Image 7's draws are the same whatever its batch-mates.
    alone = _RecordSeeds()
    DefendedModel(alone, nn.Flatten(), seed=1, indices=[7])(x[:1])
    assert alone.calls[0] == [purifier.calls[0][1]]
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.zeros(3, 1, 2, 2))
    # Restricted to image 7 it continues the call count: the draws a whole-batch call would give image 7.
    restricted = model.restrict_rows([1])
    restricted(x[:1])
    assert purifier.calls[3] == purpose_seeds(1, "eot", [7], 4) and model.calls == 4
