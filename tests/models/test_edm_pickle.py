"""EDM .pkl loading: exact round trips in EDM's pickle format, and malicious pickles refused with nothing run."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from mimicfast.errors import CheckpointError
from mimicfast.models import edm_network
from mimicfast.models.edm_pickle import PersistedObject, read_edm_pickle
from mimicfast.models.loader import load_edm_pickle
from tests.models._edm_util import assert_close_to_fixture_d, dump_with_fake_globals, edm_pickle_bytes, tiny_edm


def _write(tmp_path, data: bytes, name: str = "net.pkl"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("precond", ["EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"])
def test_round_trip_is_exact(tmp_path, precond):
    net = tiny_edm(precond_class=precond, seed=5)
    loaded = load_edm_pickle(_write(tmp_path, edm_pickle_bytes(net)))
    assert type(loaded) is type(net) and loaded.precond_class == precond
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    ours, theirs = net.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (loaded.sigma_min, loaded.sigma_max) == (net.sigma_min, net.sigma_max)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([0.2, 4.0])), net(x, torch.tensor([0.2, 4.0])),
                                   rtol=0, atol=0)


def test_parity_fixture_through_a_pickle(tmp_path, parity_dir):
    """The EDMPrecond fixture, pickled in EDM's format, loads to the same network (bit for bit) and so to the
    reference output (at the fixtures' float32 tolerance, 3e-5 * max(1, sigma))."""
    meta = json.loads((parity_dir / "edm_songunet_edmprecond_small_kwargs.json").read_text())
    net = edm_network(meta["precond_class"], **meta["kwargs"])
    net.load_state_dict(torch.load(parity_dir / "edm_songunet_edmprecond_small_state_dict.pt", weights_only=True))
    vec = torch.load(parity_dir / "edm_songunet_edmprecond_small_vectors.pt", weights_only=True)
    loaded = load_edm_pickle(_write(tmp_path, edm_pickle_bytes(net.eval())))
    with torch.no_grad():
        out = loaded(vec["x"], vec["sigma"])
        assert torch.equal(out, net(vec["x"], vec["sigma"]))
    assert_close_to_fixture_d(out, vec)
    assert loaded.init_kwargs == meta["kwargs"]


def test_other_entries_stay_inert(tmp_path):
    top = read_edm_pickle(io.BytesIO(edm_pickle_bytes(tiny_edm())))
    assert isinstance(top["loss_fn"], PersistedObject) and top["loss_fn"].class_name == "EDMLoss"
    assert top["dataset_kwargs"] == {"class_name": "training.dataset.ImageFolderDataset"}


class _Call:
    """Pickles as a call of ``func(*args)`` (what a malicious file contains)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Call(builtins.eval, touch),
        "builtins.exec": _Call(builtins.exec, touch),
        "builtins.getattr": _Call(getattr, _Call(builtins.__import__, "os"), "system"),
    }


@pytest.mark.parametrize("attack", ["os.system", "subprocess.Popen", "builtins.eval", "builtins.exec",
                                    "builtins.getattr"])
@pytest.mark.parametrize("where", ["top", "init_kwargs", "parameter"])
def test_malicious_globals_are_refused_and_nothing_runs(tmp_path, attack, where):
    marker = tmp_path / "pwned"
    payload = _attacks(marker)[attack]
    net = tiny_edm()
    if where == "top":
        data = pickle.dumps({"ema": payload}, protocol=4)
    elif where == "init_kwargs":
        net.init_kwargs = dict(net.init_kwargs, model_channels=payload)
        data = edm_pickle_bytes(net)
    else:
        data = edm_pickle_bytes(net, extra={"augment_pipe": {"_parameters": {"p": payload}}})
    path = _write(tmp_path, data)
    module = {"os.system": "posix.system|os.system"}.get(attack, attack.replace(".", r"\."))
    with pytest.raises(CheckpointError, match=rf"refusing to load global ({module})"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_malicious_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil_src = f"import os\nos.system('touch {marker}')\nopen({str(marker)!r}, 'w').close()\n"
    net = tiny_edm(seed=3)
    loaded = load_edm_pickle(_write(tmp_path, edm_pickle_bytes(net, module_src=evil_src)))
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values(),
                                                  strict=True))
    # An unknown class carrying that source is refused, still without running it.
    from tests.models._edm_util import _Persistent

    data = dump_with_fake_globals({"ema": _Persistent("Evil", {"_init_kwargs": {}}, evil_src)})
    with pytest.raises(CheckpointError, match="'Evil' is not supported"):
        load_edm_pickle(_write(tmp_path, data, "evil.pkl"))
    assert not marker.exists()


def test_malicious_nested_storage_bytes_are_refused(tmp_path):
    """Tensor storages nest torch.save bytes; those go through torch.load(weights_only=True)."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(_Call(os.system, f"touch {marker}"), buf, _use_new_zipfile_serialization=False)
    data = pickle.dumps({"ema": _Call(torch.storage._load_from_bytes, buf.getvalue())}, protocol=4)
    with pytest.raises(CheckpointError, match="unreadable tensor storage"):
        load_edm_pickle(_write(tmp_path, data))
    assert not marker.exists()


def test_persistent_ids_are_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if obj == "secret" else None

    buf = io.BytesIO()
    P(buf, protocol=4).dump({"ema": "secret"})
    with pytest.raises(CheckpointError, match="persistent id"):
        load_edm_pickle(_write(tmp_path, buf.getvalue()))


def test_truncated_and_wrong_files(tmp_path):
    data = edm_pickle_bytes(tiny_edm())
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_edm_pickle(_write(tmp_path, data[: len(data) // 2], "half.pkl"))
    with pytest.raises(CheckpointError, match=r"no EDM network under 'ema' \(found keys \['a'\]\)"):
        load_edm_pickle(_write(tmp_path, pickle.dumps({"a": 1}), "nonet.pkl"))
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_edm_pickle(tmp_path / "missing.pkl")


def test_state_that_contradicts_its_config_is_refused(tmp_path):
    net = tiny_edm()
    wrong = dict(net.init_kwargs, model_channels=16)
    net.init_kwargs = wrong
    with pytest.raises(CheckpointError, match="model.map_noise: pickled num_channels=8 but the constructor "
                                              "arguments give 16"):
        load_edm_pickle(_write(tmp_path, edm_pickle_bytes(net)))
    net = tiny_edm()
    net.model.map_layer0.bias = torch.nn.Parameter(torch.zeros(5))
    del net.model.enc["8x8_conv"]._parameters["bias"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(model\.enc\.8x8_conv\.bias\); 1 wrongly shaped "
                                              r"keys \(model\.map_layer0\.bias: file \[5\] vs model \[32\]\)"):
        load_edm_pickle(_write(tmp_path, edm_pickle_bytes(net), "shape.pkl"))
    net = tiny_edm()
    net.model.enc["8x8_block0"].norm0.eps = 1e-3  # state says eps 1e-3, kwargs rebuild 1e-6
    with pytest.raises(CheckpointError, match=r"model\.enc\.8x8_block0\.norm0: pickled eps=0\.001"):
        load_edm_pickle(_write(tmp_path, edm_pickle_bytes(net), "eps.pkl"))


def test_fake_module_is_only_present_while_dumping():
    edm_pickle_bytes(tiny_edm())
    assert "torch_utils.persistence" not in sys.modules


@pytest.mark.parametrize("protocol", [2, 4])
def test_numeric_numpy_data_is_read_and_object_arrays_are_refused(protocol):
    import numpy as np

    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(0.5), "i": np.int64(3)}
    back = read_edm_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], data["a"])
    assert back["s"] == 0.5 and back["i"] == 3
    with pytest.raises(CheckpointError, match="refusing numpy dtype 'O8'"):
        read_edm_pickle(io.BytesIO(pickle.dumps(np.array([1, "x"], dtype=object), protocol=protocol)))
