"""The run identity (RunSpec, spec id, defense labels) and bad input refused before anything is written."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mimicfast.cli import main
from mimicfast.errors import InputError
from mimicfast.evaluate.prepare import build_spec
from mimicfast.evaluate.spec import attack_label, defense_label, first_difference
from mimicfast.presets import PAPER, RELEASED
from tests.evaluate.conftest import TINY, TINY_ARGS

CHEAP = {**TINY, "defense": "none", "attacks": "clean"}


def test_defense_labels_come_from_the_resolved_settings_only():
    assert defense_label(PAPER) == "paper" and defense_label(RELEASED) == "released"
    assert defense_label(PAPER.replace(name="released")) == "paper"  # the name field cannot relabel
    assert defense_label(RELEASED.replace(name="paper", steps=7)) == "released"
    assert defense_label(PAPER.replace(scale=0.003, window=None)) == "paper window=None scale=0.003"
    assert defense_label(PAPER.replace(window=(0.1, 0.4))) == "paper window=0.1,0.4"


def test_attack_labels_carry_the_budget():
    assert attack_label("clean", True, "bpda", 10, None) == "clean"
    assert attack_label("transfer", True, "bpda", 10, 4) == "transfer (10 it)"  # the bare classifier: no EOT
    assert attack_label("pgd", False, "full", 7, None) == "pgd (7 it)"
    assert attack_label("pgd", True, "full", 20, None) == "pgd (full, 20 it, EOT 1)"
    assert attack_label("aa-rand", True, "bpda", 100, None) == "aa-rand (bpda, 100 it, EOT 20)"  # its default EOT
    assert attack_label("aa-rand", True, "bpda", 100, 4) == "aa-rand (bpda, 100 it, EOT 4)"


def test_spec_is_frozen_and_its_id_covers_the_identity():
    spec = build_spec(**CHEAP)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.eps = 0.2
    assert spec.spec_id == build_spec(**CHEAP).spec_id
    assert spec.identity["version"] and spec.identity["backend"] and spec.identity["torch"] == torch.__version__
    other = build_spec(**{**CHEAP, "seed": 1})
    assert other.spec_id != spec.spec_id
    assert first_difference(spec.identity, other.identity) == "seed: 0 there, 1 now"
    # What a run adds (draws, images, defenses, attacks) is not part of the identity.
    more = build_spec(**{**CHEAP, "draws": 4, "n": 3, "defense": "none,purifier", "attacks": "clean,transfer"})
    assert more.spec_id == spec.spec_id


def test_a_changed_model_config_beside_the_checkpoint_changes_the_identity(tmp_path):
    import shutil

    from mimicfast.default import UNET_PATH

    checkpoint = Path(shutil.copy(UNET_PATH, tmp_path / "unet.safetensors"))
    sidecar = Path(shutil.copy(UNET_PATH.with_suffix(".json"), tmp_path / "unet.json"))
    before = build_spec(**CHEAP, checkpoint=checkpoint)
    config = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**config, "use_new_attention_order": True}))  # same tensors, other network
    after = build_spec(**CHEAP, checkpoint=checkpoint)
    assert first_difference(before.identity, after.identity).startswith("model: ")
    # The same weights from another file are the same model.
    renamed = Path(shutil.copy(checkpoint, tmp_path / "other.safetensors"))
    shutil.copy(sidecar, tmp_path / "other.json")
    assert build_spec(**CHEAP, checkpoint=renamed).identity["model"] == after.identity["model"]


def test_an_edited_classifier_module_changes_the_identity(tmp_path, monkeypatch):
    module = tmp_path / "edited_classifier_mod.py"
    module.write_text("import torch\n\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                      "        self.fc = torch.nn.Linear(32 * 32, 10)\n\n    def forward(self, x):\n"
                      "        return self.fc(x.flatten(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from edited_classifier_mod import Net

    torch.save(Net().state_dict(), tmp_path / "net.pt")
    args = {**CHEAP, "classifier": tmp_path / "net.pt", "classifier_class": "edited_classifier_mod:Net",
            "trust_classifier_code": True}
    before = build_spec(**args)
    module.write_text(module.read_text().replace("x.flatten(1))", "x.flatten(1)) * 2"))
    after = build_spec(**args)
    assert first_difference(before.identity, after.identity).startswith("classifier: ")
    sys.modules.pop("edited_classifier_mod", None)


class _Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if self.kind == "vector":
            return flat.sum(1)
        if self.kind == "three":
            return flat[:, :3]
        return flat[:, :10] * float("nan")


@pytest.mark.parametrize(("kind", "message"), [
    ("vector", r"the classifier returned shape \[8\] for 8 images, expected logits \[8, classes\]"),
    ("three", r"label \d of image \d+ is not one of the classifier's 3 classes \(0..2\)"),
    ("nan", "non-finite logits"),
])
def test_a_bad_classifier_output_is_one_line_before_anything_is_written(tmp_path, kind, message):
    path = tmp_path / "clf.pt"
    torch.jit.script(_Returns(kind)).save(str(path))
    with pytest.raises(InputError, match=message):
        build_spec(**{**CHEAP, "n": 16, "batch_size": 8, "classifier": path, "trust_classifier_code": True})


def test_a_label_outside_the_classes_is_refused_before_rows(tmp_path):
    from mimicfast.default import load_test_slice

    x, y = load_test_slice(4)
    y = y.clone()
    y[3] = 2**40
    torch.save({"images": x, "labels": y}, tmp_path / "d.pt")
    with pytest.raises(InputError):
        build_spec(**{**CHEAP, "data": tmp_path / "d.pt"})


@pytest.mark.parametrize("bad", [
    ["--device", "nope"], ["--device", "meta"], ["--device", "cuda"], ["--device", "cuda:7"], ["--threads", "0"], ["--eps", "nan"],
    ["--eps", "-0.1"], ["--eps", "inf"], ["--eps", "1e9"], ["--norm", "L2", "--eps", "1e9"], ["--tau", "0"],
    ["--tau", "nan"], ["--grad", "full", "--tau", "-1"], ["--set", "name=released"], ["--set", "steps=0"],
    ["--set", "steps=50"], ["--preset", "paper,paper"], ["--choice-draws", "0"], ["--draws", "0"], ["--n", "5000"],
    ["--seed", "-1"], ["--attacks", "clean,nope"],
], ids=lambda bad: " ".join(bad))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bad):
    if bad[-1] == "cuda" and torch.cuda.is_available() or bad[-1] == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip(f"this machine has {bad[-1]}")
    out = tmp_path / "out"
    args = [*TINY_ARGS, "--defense", "none,purifier", *bad, "--out", str(out)]
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
