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

import numpy as np
import pytest
import torch
from PIL import Image

from mimicfast.cli import main
from mimicfast.errors import InputError
from mimicfast.evaluate import accuracy, runner
from mimicfast.evaluate.rows import read_rows
from mimicfast.evaluate.store import read_settings
from mimicfast.evaluate.summary import ALL_ATTACKS, SUBMISSION, summarize
from tests.evaluate.conftest import N_ROWS, TINY_ARGS, counted_rows, tiny_run


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_rows_and_summary(reference):
    out, summary = reference
    rows = counted_rows(out)
    assert len(rows) == N_ROWS
    spec_id = read_settings(out)["spec_id"]
    assert {r["spec"] for r in rows} == {spec_id}  # every row carries its run's identity
    assert {(r["defense"], r["attack"]) for r in rows} == {
        ("none", "clean"), ("none", "transfer (1 it)"),
        ("paper", "clean"), ("paper", "transfer (1 it)"), ("paper", "pgd (bpda, 1 it, EOT 1)")}
    assert set(summary) == {"rows", "settings", "notes"} and summary["notes"] == []
    for r in summary["rows"]:
        extra = {"strategy"} if r["attack"] == SUBMISSION else set()
        assert set(r) == {"defense", "attack", "protocol", "accuracy", "n", "ci95", *extra}
        assert r["n"] == 4 and 0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1
    # none: clean, transfer; paper: submission, submission (choice draws), clean, transfer, pgd, all attacks --
    # each under 3 protocols
    assert len(summary["rows"]) == 8 * 3
    assert {r["attack"] for r in summary["rows"] if r["defense"] == "paper"} >= {SUBMISSION, ALL_ATTACKS}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    md = (out / "summary.md").read_text()
    assert md.index("| paper | submission |") < md.index("| paper | pgd (bpda, 1 it, EOT 1) |")
    assert "* eps: `0.1`" in md and "worst of 2: right on all 2 scoring draws" in md  # settings as a list
    from mimicfast.default import load_default_classifier, load_test_slice

    x, y = load_test_slice(4)
    clean = next(r for r in summary["rows"] if (r["defense"], r["attack"], r["protocol"]) == ("none", "clean", "own"))
    assert clean["accuracy"] == accuracy(load_default_classifier(), x, y)
    assert all(r["dist"] <= 0.1 + 1e-6 for r in rows)


def test_rerun_skips_finished_rows_and_rescore_adds_draws(reference, tmp_path, monkeypatch, capsys):
    out = _copy(reference[0], tmp_path / "run")
    monkeypatch.setattr(runner, "ATTACKS", {})  # any attack would now fail: finished batches must not attack
    tiny_run(out)
    assert _lines(out / "rows" / "rank-0.jsonl") == N_ROWS
    summary = tiny_run(out, draws=3)  # one more scoring draw, scored from the saved adversarial examples
    assert len(counted_rows(out)) == N_ROWS + 4 * 3
    assert summary["settings"]["draws"] == 3
    assert all(r["n"] == 4 for r in summary["rows"])
    assert main(["eval", "--summarize", str(out)]) == 0
    assert "worst of 3" in capsys.readouterr().out


def test_other_identity_is_refused_naming_the_difference(reference, tmp_path):
    out = _copy(reference[0], tmp_path / "run")
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(InputError, match="eps: 0.1 there, 0.2 now"):
        tiny_run(out, eps=0.2)
    assert sorted(p.name for p in out.rglob("*")) == before


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
    assert 0 < _lines(rows_file) < N_ROWS, "the run was not killed mid-way"
    summary = tiny_run(out)
    assert _lines(rows_file) == N_ROWS  # finished rows were not written twice
    assert counted_rows(out) == counted_rows(reference[0])
    assert summary["rows"] == reference[1]["rows"] and summary["notes"] == []


def test_a_rerun_removes_the_temporary_file_of_a_write_killed_before_its_rename(reference, tmp_path):
    out = _copy(reference[0], tmp_path / "run")
    leftover = out / "rows" / ".rank-0.head.json.k1ll3d.tmp"
    leftover.write_text('{"rows": 1')
    assert any("k1ll3d" in note for note in summarize(out)["notes"])  # reported while it is there, never counted
    summary = tiny_run(out)
    assert not leftover.exists() and summary["notes"] == [] and summary["rows"] == reference[1]["rows"]


def test_torchrun_two_processes_give_the_rows_of_one(reference, tmp_path):
    out = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mimicfast", "eval", "-n", "4", *TINY_ARGS[2:], "--out", str(out)]  # torchrun takes --n for its own
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "rows" / "rank-0.jsonl").is_file() and (out / "rows" / "rank-1.jsonl").is_file()
    assert counted_rows(out) == counted_rows(reference[0])
    for saved in (reference[0] / "adv").rglob("*.pt"):
        a = torch.load(saved, weights_only=True)
        b = torch.load(out / saved.relative_to(reference[0]), weights_only=True)
        assert a["indices"] == b["indices"] and torch.equal(a["x_adv"], b["x_adv"])
    assert json.loads((out / "summary.json").read_text())["rows"] == reference[1]["rows"]


def test_failed_run_writes_nothing_and_the_corrected_command_works_with_out_inside_data(tmp_path, monkeypatch):
    from mimicfast.default import load_test_slice

    data = tmp_path / "pictures"
    data.mkdir()
    x, y = load_test_slice(4)
    for i in range(4):
        Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8)).save(data / f"img{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"img{i}.png {99 if i == 2 else int(y[i])}\n" for i in range(4)))
    out = data / "results"  # --out inside --data
    with pytest.raises(InputError, match="label 99 of image 2 is not one of the classifier's 10 classes"):
        tiny_run(out, data=data, labels=labels)
    assert not out.exists()
    labels.write_text("".join(f"img{i}.png {int(y[i])}\n" for i in range(4)))
    first = tiny_run(out, data=data, labels=labels, defense="none", attacks="clean")
    monkeypatch.setattr(runner, "ATTACKS", {})
    again = tiny_run(out, data=data, labels=labels, defense="none", attacks="clean")  # the results do not change
    assert again["rows"] == first["rows"] and again["notes"] == [] and first["rows"][0]["n"] == 4


def test_rows_of_a_folder_read_back_valid(reference):
    rows, notes = read_rows(reference[0], read_settings(reference[0]))
    assert len(rows) == N_ROWS and notes == []
