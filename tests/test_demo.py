"""``mimicfast demo`` runs end to end (tiny sizes) and writes its table, PNG grid and JSON."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mimicfast.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--n", "2", "--steps", "4", "--pgd-steps", "2", "--bpda-steps", "1", "--eot", "1",
            "--out", str(out), "--seed", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "classifier, no defense" in printed and "purifier (paper, T=4)" in printed
    assert "purifier (released, T=4)" in printed
    record = json.loads((out / "demo.json").read_text())
    assert record["n"] == 2 and record["seed"] == 3 and record["eps"] == pytest.approx(0.1)
    for name in ("paper", "released"):
        acc = record["presets"][name]["accuracy"]
        assert set(acc) == {"standard", "pgd", "bpda_eot"}
        assert all(v in (0.0, 0.5, 1.0) for v in acc.values())
        assert record["presets"][name]["settings"]["preset"]["steps"] == 4
    assert set(record["undefended"]) == {"clean", "pgd"}
    grid = Image.open(out / "demo.png")
    # rows: clean, PGD, then per preset: purified PGD, BPDA+EOT, purified BPDA
    assert grid.height == 8 * (32 * 3 + 2)


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "--n must be" in capsys.readouterr().err
