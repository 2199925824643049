"""``mimicfast demo``: end to end (tiny sizes), reproducible, reports what it ran, and prints the README's table."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from mimicfast.cli import build_parser, main
from mimicfast.demo import grid_rows
from mimicfast.evaluate.rows import read_rows
from mimicfast.evaluate.store import read_settings

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["demo", "--steps", "2", "--attack-steps", "1", "--draws", "2", "--choice-draws", "2", "--seed", "3",
        "--threads", "1"]
BEGIN, END = "<!-- demo-check: begin -->", "<!-- demo-check: end -->"


def _table(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("|")]


def _demo(capsys, *argv: str) -> str:
    threads = torch.get_num_threads()
    try:
        assert main([*argv]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    return capsys.readouterr().out


def test_demo_end_to_end_reproducible_and_reports_what_it_ran(tmp_path, capsys):
    _demo(capsys, *ARGV, "--n", "4", "--out", str(tmp_path / "a"))
    # Fewer images into the same folder: the table covers the 2 images this command ran, not the folder's 4.
    resumed = _demo(capsys, *ARGV, "--n", "2", "--out", str(tmp_path / "a"))
    fresh = _demo(capsys, *ARGV, "--n", "2", "--out", str(tmp_path / "b"))
    assert _table(resumed) == _table(fresh)
    table = "\n".join(_table(fresh))
    assert "| none | clean |" in table and "| paper | pgd (bpda, 1 it, EOT 1) |" in table and "| released scale=1000 | transfer (1 it) |" in table
    assert "| paper | submission |" in table and "worst of 2" in table and "majority of 2" in table
    assert "(n=4)" not in "\n".join(_table(resumed)) and "mimicfast demo: 2 Fashion-MNIST" in resumed
    record = json.loads((tmp_path / "a" / "demo.json").read_text())
    assert record["summary"]["settings"]["identity"]["seed"] == 3 and record["machine"]["threads"] == 1
    assert {r["n"] for r in record["summary"]["rows"]} == {2}
    # The grid's purified images are the ones the table scored: their marks are the rows' draw 0.
    out = tmp_path / "a" / "eval"
    rows, notes = read_rows(out, read_settings(out))
    assert notes == []
    args = build_parser().parse_args([*ARGV, "--n", "2", "--out", str(tmp_path / "a")])
    by_label = {label: right for label, _, right in grid_rows(args)}
    for defense in ("paper", "released scale=1000"):
        for label, attack in (("purified clean", "clean"), ("purified PGD-EOT", "pgd (bpda, 1 it, EOT 1)")):
            expected = [rows[defense, attack, "score", i, 0]["pred"] == rows[defense, attack, "score", i, 0]["label"]
                        for i in range(2)]
            assert by_label[f"{defense}: {label}"] == expected
    grid = Image.open(tmp_path / "a" / "demo.png")
    # rows: clean, transfer, then per preset: purified clean, purified transfer, PGD-EOT, purified PGD-EOT
    assert grid.height == 34 + 10 * (32 * 2 + 6)


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "--n must be" in capsys.readouterr().err
    assert not tmp_path.joinpath("eval").exists()


def _readme_block() -> tuple[list[str], list[str], dict[str, str]]:
    """The command, the table lines and the environment recorded between the README's demo-check markers."""
    text = (ROOT / "README.md").read_text()
    assert BEGIN in text and END in text, f"README.md has no {BEGIN} ... {END} block"
    block = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    command = next(line for line in block.splitlines() if line.startswith("mimicfast demo "))
    argv = shlex.split(command)[1:]
    found = re.search(r"torch (\S+), ops backend (\w+)", block)
    assert found, "the demo-check block must say: torch <version>, ops backend <name>"
    return argv, _table(block), {"torch": found[1], "backend": found[2]}


def test_demo_prints_the_readme_table_cell_for_cell(tmp_path, capsys):
    from mimicfast.ops._dispatch import backend_for

    argv, expected, recorded = _readme_block()
    here = {"torch": torch.__version__, "backend": backend_for("cpu")}
    if here != recorded:
        pytest.skip(f"the README table holds for {recorded}; this machine has {here}")
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path / "demo")
    else:
        argv += ["--out", str(tmp_path / "demo")]
    printed = _table(_demo(capsys, *argv))
    assert len(printed) == len(expected), "the table has other rows than the README's"
    for got, want in zip(printed, expected, strict=True):
        cells = [c.strip() for c in got.strip("|").split("|")]
        wanted = [c.strip() for c in want.strip("|").split("|")]
        assert cells == wanted, f"README table row differs:\n  README: {want}\n  demo:   {got}"
