"""What ``mimicfast eval`` reads: user data (.pt, .npy + labels, a folder of pictures) and user classifiers."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mimicfast.errors import InputError
from mimicfast.evaluate.inputs import check_logits, classifier_identity, load_classifier, load_data, load_model
from mimicfast.evaluate.prepare import build_spec
from mimicfast.evaluate.runner import run
from tests.models._archives import rezip


class Tiny(nn.Module):
    """A linear classifier on 1x32x32 images (importable as tests.evaluate.test_inputs:Tiny)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(32 * 32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _images(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def test_pt_npy_and_folder_give_the_same_batch(tmp_path):
    images, labels = _images()
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "d.pt")
    np.save(tmp_path / "d.npy", images)
    (tmp_path / "labels.txt").write_text("".join(f"{v}\n" for v in labels))
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img{i}.png")
    (tmp_path / "named.txt").write_text("".join(f"img{i}.png {v}\n" for i, v in enumerate(labels)))
    x0, y0, id0 = load_data(tmp_path / "d.pt", None, 1, 32, pad=True)
    x1, y1, _ = load_data(tmp_path / "d.npy", tmp_path / "labels.txt", 1, 32, pad=True)
    x2, y2, _ = load_data(folder, tmp_path / "named.txt", 1, 32, pad=True)
    assert x0.shape == (4, 1, 32, 32) and float(x0.max()) <= 1
    assert torch.equal(x0, x1) and torch.equal(x0, x2)
    assert y0.tolist() == y1.tolist() == y2.tolist() == labels.tolist()
    assert id0.startswith("d.pt:sha256:")
    with pytest.raises(InputError, match="--labels"):
        load_data(tmp_path / "d.npy", None, 1, 32, pad=True)



def test_npy_and_pt_labels_are_read_safely(tmp_path):
    images, labels = _images()
    np.save(tmp_path / "d.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    torch.save(torch.from_numpy(labels), tmp_path / "labels.pt")
    _, y_npy, _ = load_data(tmp_path / "d.npy", tmp_path / "labels.npy", 1, 32, pad=True)
    _, y_pt, _ = load_data(tmp_path / "d.npy", tmp_path / "labels.pt", 1, 32, pad=True)
    assert y_npy.tolist() == y_pt.tolist() == labels.tolist()
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"x" * 40)
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    for bad in ("bad.npy", "bad.pt"):
        with pytest.raises(InputError, match="not a readable .npy/.pt file"):
            load_data(tmp_path / "d.npy", tmp_path / bad, 1, 32, pad=True)

def test_torchscript_and_state_dict_classifiers(tmp_path):
    net = Tiny().eval()
    torch.jit.script(net).save(str(tmp_path / "tiny_script.pt"))
    torch.save(net.state_dict(), tmp_path / "tiny_state.pt")
    x = torch.rand(3, 1, 32, 32)
    scripted, _ = load_classifier(tmp_path / "tiny_script.pt", trust_code=True)
    from_state, ident = load_classifier(tmp_path / "tiny_state.pt", "tests.evaluate.test_inputs:Tiny", {"classes": 10},
                                        trust_code=True)
    assert torch.equal(scripted(x), net(x)) and torch.equal(from_state(x), net(x))
    assert ident.startswith("Tiny:sha256:")
    with pytest.raises(InputError, match="--classifier-class"):
        load_classifier(tmp_path / "tiny_state.pt", trust_code=True)


def test_bare_classifier_run_on_user_data(tmp_path):
    images, labels = _images(6)
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "d.pt")
    torch.jit.script(Tiny().eval()).save(str(tmp_path / "tiny.pt"))
    threads = torch.get_num_threads()
    try:
        spec = build_spec(data=tmp_path / "d.pt", pad=True, classifier=tmp_path / "tiny.pt",
                          trust_classifier_code=True, defense="none", attacks="clean,transfer", n=None, batch_size=4,
                          attack_steps=2, threads=1, progress=False)
        summary = run(spec, tmp_path / "out")
    finally:
        torch.set_num_threads(threads)
    rows = {(r["attack"], r["protocol"]): r for r in summary["rows"]}
    assert rows["clean", "own"]["n"] == 6 and rows["transfer (2 it)", "worst"]["n"] == 6


def _one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_classifier_code_runs_only_when_trusted(tmp_path, monkeypatch):
    torch.jit.script(Tiny().eval()).save(str(tmp_path / "script.pt"))
    torch.save(Tiny().state_dict(), tmp_path / "state.pt")
    (tmp_path / "marks_import.py").write_text(textwrap.dedent(f"""
        open({str(tmp_path / "imported")!r}, "w").close()
        from tests.evaluate.test_inputs import Tiny
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="TorchScript classifier is a program.*--trust-classifier-code") as err:
        load_classifier(tmp_path / "script.pt")
    _one_line(err)
    with pytest.raises(InputError, match="imports and runs Python code; pass --trust-classifier-code"):
        load_classifier(tmp_path / "state.pt", "marks_import:Tiny")
    assert not (tmp_path / "imported").exists() and "marks_import" not in sys.modules
    model, _ = load_classifier(tmp_path / "state.pt", "marks_import:Tiny", trust_code=True)
    assert (tmp_path / "imported").exists() and isinstance(model, Tiny)


@pytest.mark.parametrize("class_path, match", [
    ("os:system", "'os:system' names a function, not a torch.nn.Module subclass"),
    ("torch.nn:functional", "names a module, not a torch.nn.Module subclass"),
    ("tests.evaluate.test_inputs:Nope", "names nothing, not a torch.nn.Module subclass"),
    ("tests.evaluate.test_inputs", "expected MODULE:CLASS"),
    ("no_such_module_here:Net", "cannot import no_such_module_here"),
])
def test_classifier_class_must_name_a_module_subclass(tmp_path, monkeypatch, class_path, match):
    torch.save(Tiny().state_dict(), tmp_path / "state.pt")
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(InputError, match=match) as err:
        load_classifier(tmp_path / "state.pt", class_path, trust_code=True)
    _one_line(err)
    assert not called


def test_failing_constructor_and_fifo_are_one_line(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "state.pt")
    with pytest.raises(InputError, match=r"Tiny\(\*\*\{\"width\": 3\}\) failed: TypeError"):
        load_classifier(tmp_path / "state.pt", "tests.evaluate.test_inputs:Tiny", {"width": 3}, trust_code=True)
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(InputError, match="FIFO"):
        load_classifier(tmp_path / "fifo.pt", trust_code=True)


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 1, 1.7, 3]), "label 1.7 at index 2 is not an integer"),
    (np.array([0, np.nan, 1, 3]), "label nan at index 1 is not a finite number"),
    (np.array([0, 1, -1, 3]), "label -1 at index 2 is negative"),
    (np.array([0, 1, 2, 2**40]), "label 1099511627776 at index 3 is not below 16777216"),
    (np.array([True, False, True, True]), "labels must be integers, got dtype bool"),
])
def test_bad_labels_are_one_line_errors(tmp_path, labels, match):
    images, _ = _images()
    np.save(tmp_path / "d.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    torch.save(torch.from_numpy(labels), tmp_path / "labels.pt")
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "both.pt")
    for data, label_file in (("d.npy", "labels.npy"), ("d.npy", "labels.pt"), ("both.pt", None)):
        with pytest.raises(InputError, match=match) as err:
            load_data(tmp_path / data, None if label_file is None else tmp_path / label_file, 1, 32, pad=True)
        _one_line(err)


def test_negative_label_in_a_text_file_is_refused(tmp_path):
    images, _ = _images()
    np.save(tmp_path / "d.npy", images)
    (tmp_path / "labels.txt").write_text("0\n1\n-1\n3\n")
    with pytest.raises(InputError, match="labels.txt: label -1 at index 2 is negative"):
        load_data(tmp_path / "d.npy", tmp_path / "labels.txt", 1, 32, pad=True)


def test_float_labels_that_are_whole_numbers_are_kept(tmp_path):
    images, labels = _images()
    np.save(tmp_path / "d.npy", images)
    np.save(tmp_path / "labels.npy", labels.astype(np.float32))
    _, y, _ = load_data(tmp_path / "d.npy", tmp_path / "labels.npy", 1, 32, pad=True)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


def test_deflated_pt_data_and_labels_are_read_as_saved(tmp_path):
    images, labels = _images()
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "plain.pt")
    rezip(tmp_path / "plain.pt", tmp_path / "d.pt")
    torch.save(torch.from_numpy(labels), tmp_path / "plain_labels.pt")
    rezip(tmp_path / "plain_labels.pt", tmp_path / "labels.pt")
    x0, y0, _ = load_data(tmp_path / "plain.pt", None, 1, 32, pad=True)
    x1, y1, _ = load_data(tmp_path / "d.pt", None, 1, 32, pad=True)
    _, y2, _ = load_data(tmp_path / "d.pt", tmp_path / "labels.pt", 1, 32, pad=True)
    assert torch.equal(x0, x1) and y0.tolist() == y1.tolist() == y2.tolist() == labels.tolist()


def test_deflated_state_dict_classifier_is_read_as_saved(tmp_path):
    net = Tiny().eval()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    rezip(tmp_path / "plain.pt", tmp_path / "state.pt")
    model, _ = load_classifier(tmp_path / "state.pt", "tests.evaluate.test_inputs:Tiny", trust_code=True)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x), net(x))


@pytest.mark.parametrize("logits, labels, match", [
    (torch.zeros(4), torch.tensor([0, 1, 2, 3]), r"returned shape \[4\] for 4 images, expected logits \[4, classes\]"),
    (torch.zeros(4, 3), torch.tensor([0, 1, 2, 9]), r"label 9 of image 3 is not one of the classifier's 3 classes"),
    (torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), torch.tensor([0, 1]), "non-finite logits .* for image 1"),
    (torch.zeros(3, 10), torch.tensor([0, 1, 2, 3]), r"shape \[3, 10\] for 4 images"),
    (torch.zeros(4, 10, dtype=torch.long), torch.tensor([0, 1, 2, 3]), "int64 logits, expected floating point"),
    ((torch.zeros(4, 10),), torch.tensor([0, 1, 2, 3]), "returned a tuple"),
])
def test_check_logits_refuses_what_cannot_be_scored(logits, labels, match):
    with pytest.raises(InputError, match=match) as err:
        check_logits(logits, labels, len(labels))
    _one_line(err)


def test_check_logits_checks_every_label_not_only_the_batch():
    assert check_logits(torch.zeros(2, 10), torch.tensor([0, 9, 3]), 2) == 10
    with pytest.raises(InputError, match="label 10 of image 2"):
        check_logits(torch.zeros(2, 10), torch.tensor([0, 9, 10]), 2)


def test_classifier_identity_follows_content_not_path(tmp_path, monkeypatch):
    module = tmp_path / "clf_mod.py"
    module.write_text("from tests.evaluate.test_inputs import Tiny as Base\n\n\nclass Net(Base):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = Tiny().eval()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    torch.save(net.state_dict(), tmp_path / "a" / "w.pt")
    torch.save(net.state_dict(), tmp_path / "b" / "w.pt", _use_new_zipfile_serialization=False)
    _, id_a = load_classifier(tmp_path / "a" / "w.pt", "clf_mod:Net", trust_code=True)
    _, id_b = load_classifier(tmp_path / "b" / "w.pt", "clf_mod:Net", trust_code=True)
    assert id_a == id_b  # same weights, same class: another file format does not matter
    cls = sys.modules["clf_mod"].Net
    assert classifier_identity(tmp_path / "a" / "w.pt", cls) == id_a
    assert classifier_identity(tmp_path / "a" / "w.pt", cls, {"classes": 10}) != id_a
    module.write_text(module.read_text() + "\n# edited\n")
    assert classifier_identity(tmp_path / "a" / "w.pt", cls) != id_a
    torch.save({k: v + 1 for k, v in net.state_dict().items()}, tmp_path / "a" / "w.pt")
    module.write_text(module.read_text().replace("\n# edited\n", ""))
    assert classifier_identity(tmp_path / "a" / "w.pt", cls) != id_a
    torch.jit.script(net).save(str(tmp_path / "script.pt"))
    assert classifier_identity(tmp_path / "script.pt").startswith("script.pt:sha256:")


def test_model_identity_follows_the_loaded_network_and_its_config(tmp_path, parity_dir):
    cfg = json.loads((parity_dir / "gd_unet_small_kwargs.json").read_text())["create_model_kwargs"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(parity_dir / "gd_unet_small_state_dict.pt", tmp_path / name / "m.pt")
        (tmp_path / name / "m.json").write_text(json.dumps({"family": "guided_diffusion", **cfg}))
    _, id_a = load_model(tmp_path / "a" / "m.pt")
    _, id_b = load_model(tmp_path / "b" / "m.pt")
    assert id_a == id_b and id_a.startswith("GuidedDiffusionUNet:sha256:")
    (tmp_path / "b" / "m.json").write_text(json.dumps({"family": "guided_diffusion", **cfg, "dropout": 0.1}))
    _, id_changed = load_model(tmp_path / "b" / "m.pt")
    assert id_changed != id_a  # the config beside the checkpoint changed, the checkpoint did not
    _, bundled = load_model(None)
    assert bundled.startswith("GuidedDiffusionUNet:sha256:") and bundled != id_a


def test_labels_files_that_hold_no_labels_are_one_line_errors(tmp_path):
    images, _ = _images()
    np.save(tmp_path / "d.npy", images)
    torch.save({"labels": [0, 1, 2, 3]}, tmp_path / "dict.pt")
    (tmp_path / "huge.txt").write_text("0\n1\n2\n" + "9" * 40 + "\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x01")
    os.mkfifo(tmp_path / "fifo.txt")
    for name, match in (("dict.pt", "dict.pt: labels must be integers"), ("huge.txt", "huge.txt: labels must be integers"),
                        ("binary.txt", "must be .npy, .pt or UTF-8 text"), ("fifo.txt", "fifo.txt: is a FIFO")):
        with pytest.raises(InputError, match=match) as err:
            load_data(tmp_path / "d.npy", tmp_path / name, 1, 32, pad=True)
        _one_line(err)
