"""``mimicfast demo`` runs end to end (tiny sizes), writes its table, PNG grid and JSON, and is reproducible."""

from __future__ import annotations

import json

from PIL import Image

from mimicfast.cli import build_parser, main
from mimicfast.demo import grid_rows
from mimicfast.evaluate.store import read_rows

ARGV = ["demo", "--n", "2", "--steps", "2", "--attack-steps", "1", "--draws", "2", "--seed", "3", "--threads", "1"]


def _table(printed: str) -> str:
    return "\n".join(line for line in printed.splitlines() if line.startswith("|"))


def test_demo_end_to_end_and_reproducible(tmp_path, capsys):
    assert main([*ARGV, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert main([*ARGV, "--out", str(tmp_path / "b")]) == 0  # a fresh run, not a resume
    second = capsys.readouterr().out
    table = _table(first)
    assert table == _table(second)
    assert "| none | clean |" in table and "| paper | pgd (bpda) |" in table and "| released | transfer |" in table
    assert "worst of 2" in table and "majority of 2" in table
    record = json.loads((tmp_path / "a" / "demo.json").read_text())
    assert record["summary"]["settings"]["fixed"]["seed"] == 3 and record["machine"]["threads"] == 1
    assert {r["n"] for r in record["summary"]["rows"]} == {2}
    # The grid's purified images are the ones the table scored: their marks are the rows' draw 0.
    rows = read_rows(tmp_path / "a" / "eval")
    args = build_parser().parse_args([*ARGV, "--out", str(tmp_path / "a")])
    by_label = {label: right for label, _, right in grid_rows(args)}
    for defense in ("paper", "released"):
        for label, attack in (("purified clean", "clean"), ("purified PGD-EOT", "pgd (bpda)")):
            table = [rows[defense, attack, i, 0]["pred"] == rows[defense, attack, i, 0]["label"] for i in range(2)]
            assert by_label[f"{defense}: {label}"] == table
    grid = Image.open(tmp_path / "a" / "demo.png")
    # rows: clean, transfer, then per preset: purified clean, purified transfer, PGD-EOT, purified PGD-EOT
    assert grid.height == 34 + 10 * (32 * 2 + 6)


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "--n must be" in capsys.readouterr().err
