"""A tiny evaluation run shared by the evaluator's tests (every test copies it before changing anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mimicfast.evaluate.prepare import build_spec
from mimicfast.evaluate.rows import read_rows
from mimicfast.evaluate.runner import run
from mimicfast.evaluate.store import read_settings

TINY = {"n": 4, "batch_size": 2, "steps": 2, "attack_steps": 1, "eot": 1, "draws": 2, "choice_draws": 2,
        "defense": "none,purifier", "attacks": "clean,transfer,pgd", "threads": 1, "progress": False}
TINY_ARGS = ["--n", "4", "--batch-size", "2", "--steps", "2", "--attack-steps", "1", "--eot", "1", "--draws", "2",
             "--choice-draws", "2", "--defense", "none,purifier", "--attacks", "clean,transfer,pgd", "--threads", "1",
             "--no-progress"]
# 4 images x (bare classifier: clean, transfer (= pgd) x 1 draw + paper: 3 attacks x (2 scoring + 2 choice draws))
N_ROWS = 4 * (2 + 3 * 4)


def tiny_run(out: Path, **changes) -> dict:
    """A TINY evaluation (with ``changes``) into ``out``; torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return run(build_spec(**{**TINY, **changes}), out)
    finally:
        torch.set_num_threads(threads)


def counted_rows(out: Path) -> list[dict]:
    """The rows a summary of ``out`` counts, sorted, without their running digest (which depends on the file)."""
    rows, _ = read_rows(out, read_settings(out))
    return sorted(({k: v for k, v in r.items() if k != "chain"} for r in rows.values()),
                  key=lambda r: (r["defense"], r["attack"], r["role"], r["index"], r["draw"]))


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "reference"
    return out, tiny_run(out)
