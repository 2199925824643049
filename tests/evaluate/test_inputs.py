"""What ``mimicfast eval`` reads: user data (.pt, .npy + labels, a folder of pictures) and user classifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mimicfast.errors import InputError
from mimicfast.evaluate.inputs import load_classifier, load_data
from mimicfast.evaluate.runner import run


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
    scripted, _ = load_classifier(tmp_path / "tiny_script.pt")
    from_state, ident = load_classifier(tmp_path / "tiny_state.pt", "tests.evaluate.test_inputs:Tiny", {"classes": 10})
    assert torch.equal(scripted(x), net(x)) and torch.equal(from_state(x), net(x))
    assert "tests.evaluate.test_inputs:Tiny" in ident
    with pytest.raises(InputError, match="--classifier-class"):
        load_classifier(tmp_path / "tiny_state.pt")


def test_bare_classifier_run_on_user_data(tmp_path):
    images, labels = _images(6)
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "d.pt")
    torch.jit.script(Tiny().eval()).save(str(tmp_path / "tiny.pt"))
    threads = torch.get_num_threads()
    try:
        summary = run(tmp_path / "out", data=tmp_path / "d.pt", pad=True, classifier=tmp_path / "tiny.pt",
                      defense="none", attacks="clean,transfer", n=None, batch_size=4, attack_steps=2, threads=1,
                      progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = {(r["attack"], r["protocol"]): r for r in summary["rows"]}
    assert rows["clean", "own"]["n"] == 6 and rows["transfer", "worst"]["n"] == 6
