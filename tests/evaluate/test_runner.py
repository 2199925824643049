"""``mimicfast eval`` end to end on a tiny configuration: rows, summary, resume, refusal, re-scoring, kill, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mimicfast.cli import main
from mimicfast.errors import InputError
from mimicfast.evaluate import accuracy, runner
from mimicfast.evaluate.runner import run
from mimicfast.evaluate.store import read_jsonl, read_rows

TINY = {"n": 4, "batch_size": 2, "steps": 2, "attack_steps": 1, "eot": 1, "draws": 2, "defense": "none,purifier",
        "attacks": "clean,transfer,pgd", "threads": 1, "progress": False}
TINY_ARGS = ["--n", "4", "--batch-size", "2", "--steps", "2", "--attack-steps", "1", "--eot", "1", "--draws", "2",
             "--defense", "none,purifier", "--attacks", "clean,transfer,pgd", "--threads", "1", "--no-progress"]
# 4 images x (bare classifier: clean, transfer (= pgd) x 1 draw + paper: 3 attacks x 2 draws)
N_ROWS = 4 * (2 + 3 * 2)


def _run(out: Path, **changes) -> dict:
    threads = torch.get_num_threads()
    try:
        return run(out, **{**TINY, **changes})
    finally:
        torch.set_num_threads(threads)


def _rows(out: Path) -> list[dict]:
    return sorted(read_rows(out).values(), key=lambda r: (r["defense"], r["attack"], r["index"], r["draw"]))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "reference"
    return out, _run(out)


def test_rows_and_summary(reference):
    out, summary = reference
    rows = _rows(out)
    assert len(rows) == N_ROWS
    assert {(r["defense"], r["attack"]) for r in rows} == {
        ("none", "clean"), ("none", "transfer"),
        ("paper", "clean"), ("paper", "transfer"), ("paper", "pgd (bpda)")}
    assert set(summary) == {"rows", "settings"}
    for r in summary["rows"]:
        assert set(r) == {"defense", "attack", "protocol", "accuracy", "n", "ci95"}
        assert r["n"] == 4 and 0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1
    assert len(summary["rows"]) == 6 * 3  # + paper, "all attacks (per image)" (transfer and pgd)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert "| paper | pgd (bpda) |" in (out / "summary.md").read_text()
    # The bare classifier's clean row is its plain accuracy; perturbations stay in the eps-ball.
    from mimicfast.default import load_default_classifier, load_test_slice

    x, y = load_test_slice(4)
    clean = next(r for r in summary["rows"] if (r["defense"], r["attack"], r["protocol"]) == ("none", "clean", "own"))
    assert clean["accuracy"] == accuracy(load_default_classifier(), x, y)
    assert all(r["dist"] <= 0.1 + 1e-6 for r in rows)


def test_rerun_skips_finished_rows_and_rescore_adds_draws(reference, tmp_path, monkeypatch, capsys):
    out = _copy(reference[0], tmp_path / "run")
    monkeypatch.setattr(runner, "ATTACKS", {})  # any attack would now fail: finished batches must not attack
    _run(out)
    assert len(read_jsonl([out / "rows" / "rank-0.jsonl"])) == N_ROWS
    summary = _run(out, draws=3)  # one more defense draw, scored from the saved adversarial examples
    assert len(_rows(out)) == N_ROWS + 4 * 3
    assert summary["settings"]["draws"] == 3
    assert all(r["n"] == 4 for r in summary["rows"])
    assert main(["eval", "--summarize", str(out)]) == 0
    assert "worst of 3" in capsys.readouterr().out


def test_other_settings_are_refused(reference, tmp_path):
    out = _copy(reference[0], tmp_path / "run")
    with pytest.raises(InputError, match="eps: 0.1 there, 0.2 now"):
        _run(out, eps=0.2)


def test_killed_run_resumes_to_the_same_rows(reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mimicfast", "eval", *TINY_ARGS, "--out", str(out)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = out / "rows" / "rank-0.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_file.is_file() and rows_file.stat().st_size > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(read_jsonl([rows_file])) < N_ROWS, "the run was not killed mid-way"
    summary = _run(out)
    assert len(read_jsonl([rows_file])) == N_ROWS  # finished rows were not written twice
    assert _rows(out) == _rows(reference[0])
    assert summary["rows"] == reference[1]["rows"]


def test_torchrun_two_processes_give_the_rows_of_one(reference, tmp_path):
    out = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mimicfast", "eval", "-n", "4", *TINY_ARGS[2:], "--out", str(out)]  # torchrun takes --n for its own
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "rows" / "rank-0.jsonl").is_file() and (out / "rows" / "rank-1.jsonl").is_file()
    assert _rows(out) == _rows(reference[0])
    for saved in (reference[0] / "adv").rglob("*.pt"):
        a = torch.load(saved, weights_only=True)
        b = torch.load(out / saved.relative_to(reference[0]), weights_only=True)
        assert a["indices"] == b["indices"] and torch.equal(a["x_adv"], b["x_adv"])
    assert json.loads((out / "summary.json").read_text())["rows"] == reference[1]["rows"]
