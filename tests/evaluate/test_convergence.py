"""k against 2k: one run at two attack budgets, figure by figure, with the 2-point verdict."""

from __future__ import annotations

import json
import shutil

import pytest

from mimicfast.cli import main
from mimicfast.errors import InputError
from mimicfast.evaluate.convergence import NOT_CONVERGED, convergence, format_convergence
from mimicfast.evaluate.rows import read_rows
from mimicfast.evaluate.store import read_settings
from mimicfast.evaluate.summary import summarize_rows
from tests.evaluate.conftest import tiny_run


@pytest.fixture(scope="module")
def budgets(tmp_path_factory):
    root = tmp_path_factory.mktemp("budgets")
    for steps in (1, 2, 3):
        tiny_run(root / f"k{steps}", attack_steps=steps)
    return root


def test_figures_at_k_and_2k_with_their_verdicts(budgets, capsys):
    rows = convergence(budgets / "k1", budgets / "k2")
    by = {(r["defense"], r["attack"]): r for r in rows}
    assert ("paper", "pgd (bpda, 1/2 it, EOT 1)") in by and ("none", "transfer (1/2 it)") in by
    assert by["paper", "clean"]["verdict"] == "no attack" and by["paper", "clean"]["k"] == by["paper", "clean"]["2k"]
    for r in rows:
        moved = max(abs(r["k"][p] - r["2k"][p]) for p in r["k"])
        if r["attack"] != "clean":
            assert (r["verdict"] == NOT_CONVERGED) == (moved > 2.0)
    strict = convergence(budgets / "k1", budgets / "k2", tolerance=-1)
    assert all(r["verdict"] == NOT_CONVERGED for r in strict if r["attack"] != "clean")
    assert main(["eval", "--convergence", str(budgets / "k1"), str(budgets / "k2")]) == 0
    assert capsys.readouterr().out.strip() == format_convergence(rows, 2)


def test_only_one_run_at_two_budgets_is_compared(budgets, tmp_path):
    with pytest.raises(InputError, match="not twice"):
        convergence(budgets / "k1", budgets / "k3")
    other = tmp_path / "seed"
    tiny_run(other, attack_steps=2, seed=1)
    with pytest.raises(InputError, match="not one run at two budgets .*seed"):
        convergence(budgets / "k1", other)
    shutil.rmtree(other)


def test_a_2k_run_in_progress_is_compared_on_the_images_it_has_finished(budgets, tmp_path):
    part = tmp_path / "k2"
    shutil.copytree(budgets / "k2", part)
    rows_file = part / "rows" / "rank-0.jsonl"
    lines = rows_file.read_text().splitlines(keepends=True)
    rows = [json.loads(line) for line in lines]
    # Cut where a kill would: after the paper pgd rows of the first batch (images 0 and 1 finished, 2 and 3 not).
    cut = 1 + max(i for i, r in enumerate(rows) if r["defense"] == "paper" and "pgd" in r["attack"] and r["index"] == 1)
    rows_file.write_text("".join(lines[:cut]))
    (part / "rows" / "rank-0.head.json").write_text(json.dumps({"rows": cut, "chain": rows[cut - 1]["chain"]}))
    by = {(r["defense"], r["attack"]): r for r in convergence(budgets / "k1", part)}
    assert {r["images"] for (d, _), r in by.items() if d == "paper"} == {2}
    assert {r["images"] for (d, _), r in by.items() if d == "none"} == {4}
    settings = read_settings(budgets / "k1")
    first_two = {k: r for k, r in read_rows(budgets / "k1", settings)[0].items() if k[3] < 2 or k[0] == "none"}
    expected = {(r["attack"], r["protocol"]): round(100 * r["accuracy"], 1)
                for r in summarize_rows(first_two, settings) if r["defense"] == "paper"}
    row = by["paper", "pgd (bpda, 1/2 it, EOT 1)"]
    assert row["k"] == {p: expected["pgd (bpda, 1 it, EOT 1)", p] for p in row["k"]}
