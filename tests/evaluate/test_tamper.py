"""Results that refuse tampering: edited, removed, injected or stray rows, damaged settings, timing and adversarial
examples are reported by name and never counted silently; a rerun recomputes what was left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mimicfast.cli import main
from mimicfast.errors import InputError
from mimicfast.evaluate.rows import _chain
from mimicfast.evaluate.spec import spec_id_of
from mimicfast.evaluate.store import adv_path, load_adv, save_adv
from mimicfast.evaluate.summary import combined, summarize
from tests.evaluate.conftest import N_ROWS, counted_rows, tiny_run


def _copy(reference, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reference[0], tmp_path / "run"))


def _rows_file(out: Path) -> Path:
    return out / "rows" / "rank-0.jsonl"


def _rewrite(out: Path, lines: list[str]) -> None:
    _rows_file(out).write_text("".join(line + "\n" for line in lines))


def _append_chained(out: Path, rows: list[dict]) -> None:
    """Append rows whose running digest is right (an injection by someone who knows the scheme)."""
    lines = _rows_file(out).read_text().splitlines()
    chain = json.loads(lines[-1])["chain"]
    for row in rows:
        row = dict(row)
        row["chain"] = chain = _chain(chain, row)
        lines.append(json.dumps(row, sort_keys=True))
    _rewrite(out, lines)


@pytest.mark.parametrize("edit", ["pred", "42", "list", "null pred"])
def test_an_edited_row_is_reported_by_line_and_recomputed_on_rerun(reference, tmp_path, capsys, edit):
    out = _copy(reference, tmp_path)
    lines = _rows_file(out).read_text().splitlines()
    row = json.loads(lines[2])
    lines[2] = {"pred": json.dumps({**row, "pred": (row["pred"] + 1) % 10}), "42": "42", "list": "[1, 2]",
                "null pred": json.dumps({**row, "pred": None})}[edit]
    _rewrite(out, lines)
    summary = summarize(out)
    assert any("rank-0.jsonl line 3: a row was edited, removed or inserted" in n for n in summary["notes"])
    assert len(counted_rows(out)) == 2  # only the rows before the break
    assert "Notes (rows left out)" in (out / "summary.md").read_text()
    rerun = tiny_run(out)
    assert "note: " in capsys.readouterr().err
    assert counted_rows(out) == counted_rows(reference[0])
    assert rerun["rows"] == reference[1]["rows"] and rerun["notes"] == []


def test_rows_removed_from_the_end_are_reported(reference, tmp_path):
    out = _copy(reference, tmp_path)
    _rewrite(out, _rows_file(out).read_text().splitlines()[:-1])
    summary = summarize(out)
    assert any(f"ends after {N_ROWS - 1} rows but {N_ROWS} were written" in n for n in summary["notes"])
    assert all(r["n"] == 0 for r in summary["rows"])


def test_a_removed_rows_file_is_reported(reference, tmp_path):
    out = _copy(reference, tmp_path)
    _rows_file(out).unlink()
    summary = summarize(out)
    assert any(f"rank-0.jsonl ends after 0 rows but {N_ROWS} were written" in n for n in summary["notes"])


def test_injected_rows_are_checked_against_the_folder(reference, tmp_path):
    out = _copy(reference, tmp_path)
    row = json.loads(_rows_file(out).read_text().splitlines()[0])  # a "none" / "clean" row of image 0
    row = {k: v for k, v in row.items() if k != "chain"}
    injected = [
        {**row, "index": 999},  # an image the data does not have
        {**row, "attack": "cw", "label": (row["label"] + 1) % 10},  # an attack that never ran, relabelling
        {**row, "index": 1, "label": (row["label"] + 1) % 10},  # another label than the data's
        {**row, "draw": 7},  # a draw the run never made
        {**row, "pred": 12},  # not a class
        {**row, "pred": None},  # no prediction
        {**row, "dist": 1.0},  # outside eps
        {**row, "spec": "0" * 16},  # another run
    ]
    _append_chained(out, injected)
    summary = summarize(out)
    notes = "\n".join(summary["notes"])
    for expected in ("image index 999 outside", "none / cw, which this folder never ran", "is not the data's",
                     "draw 7 outside", "prediction 12 is not one of", "'pred' missing", "outside the threat model",
                     "a row of another run"):
        assert expected in notes
    assert summary["rows"] == reference[1]["rows"]


def test_an_unknown_rows_file_is_ignored_with_a_note(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    shutil.copy(_rows_file(out), out / "rows" / "rank-+.jsonl")
    summary = summarize(out)
    assert summary["rows"] == reference[1]["rows"]
    assert any("rank-+.jsonl is not a rows file" in n for n in summary["notes"])
    assert main(["eval", "--summarize", str(out)]) == 0
    assert "rank-+.jsonl is not a rows file" in capsys.readouterr().err


@pytest.mark.parametrize(("damage", "message"), [
    ("[]", "settings.json is damaged (a JSON list, not an object)"),
    ("no draws", "settings.json is damaged ('draws' missing"),
    ("edited eps", "settings.json was edited (its spec id does not match"),
    ("not json", "settings.json is damaged"),
])
def test_damaged_settings_is_a_one_line_error(reference, tmp_path, capsys, damage, message):
    out = _copy(reference, tmp_path)
    path = out / "settings.json"
    settings = json.loads(path.read_text())
    if damage == "no draws":
        del settings["draws"]
    elif damage == "edited eps":
        settings["identity"]["eps"] = 0.5
    text = {"[]": "[]", "not json": "{"}.get(damage, json.dumps(settings))
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        summarize(out)
    assert main(["eval", "--summarize", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "new --out" in err


def test_damaged_timing_is_a_one_line_error(reference, tmp_path):
    out = _copy(reference, tmp_path)
    timing = out / "timing" / "rank-0.jsonl"
    lines = timing.read_text().splitlines()
    row = json.loads(lines[1])
    del row["attack_s"]
    lines[1] = json.dumps(row)
    timing.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"rank-0.jsonl line 2 is damaged .*delete"):
        summarize(out)


def test_a_far_adversarial_example_is_recomputed_with_a_note(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    path = adv_path(out, "paper", "pgd (bpda, 1 it, EOT 1)", 0)
    saved = torch.load(path, weights_only=True)
    saved["x_adv"] = 1 - saved["x_adv"]  # about 1.0 away from the clean image at eps 0.1
    torch.save(saved, path)
    shutil.rmtree(out / "rows")  # rescore everything from the saved examples
    summary = tiny_run(out)
    assert "batch-00000.pt" in (err := capsys.readouterr().err) and "away from the clean image" in err
    assert summary["rows"] == reference[1]["rows"]
    assert counted_rows(out) == counted_rows(reference[0])


@pytest.mark.parametrize(("damage", "why"), [
    ("empty", "unreadable"),
    ("float64", "torch.float64"),
    ("shape", "[1, 1, 32, 32], expected"),
    ("nan", "outside [0, 1] or not finite"),
    ("range", "outside [0, 1] or not finite"),
    ("far", "away from the clean image"),
    ("indices", "saved by another run or for other images"),
    ("spec", "saved by another run or for other images"),
])
def test_damaged_adversarial_examples_are_not_used(tmp_path, damage, why):
    x = torch.rand(2, 1, 32, 32) * 0.5 + 0.25
    x_adv = (x + 0.05).clamp(0, 1)
    path = tmp_path / "batch.pt"
    save_adv(path, "s" * 16, [0, 1], x_adv)
    assert torch.equal(load_adv(path, "s" * 16, [0, 1], x, 0.1, "Linf")[0], x_adv)
    changed = {"float64": x_adv.double(), "shape": x_adv[:1], "nan": x_adv.clone().fill_(float("nan")),
               "range": x_adv + 1, "far": 1 - x_adv}.get(damage, x_adv)
    if damage == "empty":
        path.write_bytes(b"")
    else:
        save_adv(path, "t" * 16 if damage == "spec" else "s" * 16, [0, 2] if damage == "indices" else [0, 1], changed)
    loaded, note = load_adv(path, "s" * 16, [0, 1], x, 0.1, "Linf")
    assert loaded is None and why in note and str(path) in note and note.endswith("recomputed")


def test_summarize_pools_only_folders_of_one_run(reference, tmp_path, capsys):
    a = reference[0]
    same = Path(shutil.copytree(a, tmp_path / "same"))
    pooled = combined([a, same])
    assert pooled["rows"] == reference[1]["rows"] and pooled["notes"] == []
    other = Path(shutil.copytree(a, tmp_path / "other"))
    settings = json.loads((other / "settings.json").read_text())
    settings["identity"]["eps"] = 0.2
    settings["spec_id"] = spec_id_of(settings["identity"])
    (other / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(InputError, match="hold different runs \\(eps: 0.1 there, 0.2 now\\)"):
        combined([a, other])
    assert main(["eval", "--summarize", str(a), str(other)]) == 2
    assert "eps: 0.1 there, 0.2 now" in capsys.readouterr().err
