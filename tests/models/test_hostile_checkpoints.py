"""Hostile checkpoints and configs: each class of attack ends in one CheckpointError line, never a hang, a
traceback of another type, or a change to the loader's own objects."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mimicfast.cli import main as cli_main
from mimicfast.convert import convert
from mimicfast.errors import CheckpointError
from mimicfast.models import edm_pickle, load
from mimicfast.models.loader import load_state_dict_file
from mimicfast.safe_read import MAX_JSON_DEPTH, check_pickle
from tests.models._edm_util import edm_pickle_bytes, loader_state, tiny_edm

TINY_GD = {
    "family": "guided_diffusion",
    "image_size": 8,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,1",
    "attention_resolutions": "4",
    "num_head_channels": 16,
    "in_channels": 1,
}


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) <= 2000, msg
    return msg


def _no_hang(fn, seconds: float = 20.0):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it does not return in time."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- handed to the caller
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def tiny_gd(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny guided-diffusion checkpoint with its sidecar config."""
    from mimicfast.models import guided_diffusion_unet
    from mimicfast.models.random_init import randomize_weights

    kwargs = {k: v for k, v in TINY_GD.items() if k != "family"}
    sd = randomize_weights(guided_diffusion_unet(**kwargs)).state_dict()
    folder = tmp_path_factory.mktemp("gd")
    torch.save(sd, folder / "tiny.pt")
    (folder / "tiny.json").write_text(json.dumps(TINY_GD))
    return folder / "tiny.pt", sd


def _tuple_bomb(levels: int = 80) -> bytes:
    """Protocol-2 ops for t_{i+1} = (t_i, t_i) through the memo: ~400 bytes describing 2**levels leaves."""
    ops = b"X\x01\x00\x00\x00xq\x00"
    for i in range(levels):
        ops += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1])
    return ops


def _bomb_as_dict_key(levels: int = 80) -> bytes:
    return b"\x80\x02}" + _tuple_bomb(levels) + b"K\x01s."


# --- H1/H2: files that are not regular files -------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["w.pt", "w.safetensors", "w.pkl"])
def test_fifo_checkpoint_is_refused_without_opening(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO") as err:
        _no_hang(lambda: load(fifo))
    assert name in _one_line(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_sidecar_config_is_refused(tmp_path, tiny_gd):
    path, sd = tiny_gd
    ckpt = tmp_path / "m.pt"
    torch.save(sd, ckpt)
    os.mkfifo(tmp_path / "m.json")
    with pytest.raises(CheckpointError, match="m.json: is a FIFO"):
        _no_hang(lambda: load(ckpt))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("name", ["w.pt", "w.safetensors", "w.pkl", "w.json"])
def test_symlink_to_device_is_refused(tmp_path, tiny_gd, name):
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="character device"):
        _no_hang(lambda: load(link) if name != "w.json" else load(tiny_gd[0], link))


def test_symlink_to_regular_file_still_loads(tmp_path, tiny_gd):
    path, sd = tiny_gd
    (tmp_path / "link.pt").symlink_to(path)
    assert load_state_dict_file(tmp_path / "link.pt").keys() == sd.keys()


# --- H3: configs that ask for absurd sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_res_blocks": 1_000_000}, r"num_res_blocks must be an integer in \[0, 32\], got 1000000"),
        ({"num_channels": 100_000_000}, "num_channels must be an integer in"),
        ({"image_size": 10**9}, "image_size must be an integer in"),
        ({"num_channels": -32}, r"num_channels must be an integer in \[1, 4096\], got -32"),
        ({"num_channels": 48}, "GroupNorm needs a positive multiple of 32"),
        ({"attention_resolutions": "0"}, r"attention_resolutions\[0\] must be an integer in \[1, 4096\], got 0"),
        ({"attention_resolutions": "a,b"}, "attention_resolutions must be comma-separated integers"),
        ({"num_head_channels": 0}, r"num_head_channels must be an integer in \[1, 4096\] or -1, got 0"),
        ({"num_head_channels": 7}, "attention over 32 channels cannot be split into num_head_channels 7"),
        ({"num_head_channels": -1, "num_heads": 3}, "attention over 32 channels cannot be split into 3 heads"),
        ({"channel_mult": "1," * 20 + "1"}, "channel_mult must be a list of 1 to 8 values"),
        ({"dropout": float("nan")}, "dropout must be a number"),
        ({"learn_sigma": "yes"}, "learn_sigma must be true or false"),
        ({"num_res_blocks": 1.5}, "num_res_blocks must be an integer"),
        ({"num_res_blocks": True}, "num_res_blocks must be an integer"),
        ({"evil": 1}, "unknown guided-diffusion key 'evil'"),
        ({"family": "other"}, "'family' must be one of"),
    ],
)
def test_gd_config_values_are_validated_before_building(tmp_path, tiny_gd, change, match):
    path, _ = tiny_gd
    cfg = dict(TINY_GD, **change)
    with pytest.raises(CheckpointError, match=match) as err:
        _no_hang(lambda: load(path, cfg), seconds=10)
    _one_line(err)
    # The same through a sidecar JSON (what the CLI reads), where NaN is written as JSON's NaN extension.
    ckpt = tmp_path / "c.pt"
    ckpt.symlink_to(path)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="c.json: "):
        _no_hang(lambda: load(ckpt), seconds=10)


@pytest.mark.parametrize(
    ("precond", "change", "match"),
    [
        ("iDDPMPrecond", {"M": 100_000_000}, r"M must be an integer in \[1, 2000\]"),
        ("VPPrecond", {"M": 0}, "M must be an integer"),
        ("EDMPrecond", {"num_blocks": 1_000_000}, "num_blocks must be an integer"),
        ("EDMPrecond", {"img_resolution": 0}, "img_resolution must be an integer in"),
        ("EDMPrecond", {"img_resolution": 2, "channel_mult": [1, 1, 1]}, "too small for 3 resolution levels"),
        ("EDMPrecond", {"model_channels": -8}, "model_channels must be an integer in"),
        ("EDMPrecond", {"sigma_data": float("inf")}, "sigma_data must be a number"),
        ("EDMPrecond", {"model_type": "Evil"}, "model_type must be one of"),
        ("EDMPrecond", {"attn_resolutions": "16"}, "attn_resolutions must be a list"),
        ("EDMPrecond", {"beta_d": 1.0}, "unknown EDM EDMPrecond/SongUNet key 'beta_d'"),
        ("Evil", {}, "precond_class must be one of"),
    ],
)
def test_edm_config_values_are_validated_before_building(tiny_edm_state_dict, precond, change, match):
    path, kwargs = tiny_edm_state_dict
    cfg = {"family": "edm", "precond_class": precond, **kwargs, **change}
    with pytest.raises(CheckpointError, match=match) as err:
        _no_hang(lambda: load(path, cfg), seconds=10)
    _one_line(err)


@pytest.fixture(scope="module")
def tiny_edm_state_dict(tmp_path_factory):
    net = tiny_edm()
    path = tmp_path_factory.mktemp("edm") / "edm.pt"
    torch.save(net.state_dict(), path)
    return path, dict(net.init_kwargs)


def test_json_nested_100k_deep_is_refused(tmp_path, tiny_gd):
    path, _ = tiny_gd
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=f"nested 100000 levels deep \\(at most {MAX_JSON_DEPTH}\\)"):
        load(path, deep)
    brackets_in_strings = tmp_path / "strings.json"
    brackets_in_strings.write_text(json.dumps(dict(TINY_GD, note="[" * 1000)).replace('"note"', '"family2"'))
    with pytest.raises(CheckpointError, match="unknown guided-diffusion key 'family2'"):
        load(path, brackets_in_strings)  # the depth scan skips strings; the validator names the extra key
    big = tmp_path / "big.json"
    big.write_text(" " * (2**20 + 1))
    with pytest.raises(CheckpointError, match="more than the 1048576"):
        load(path, big)


# --- H4: exponentially large object trees in pickles ------------------------------------------------------------


def test_tuple_bomb_in_edm_pickle_is_refused_quickly(tmp_path):
    pkl = tmp_path / "bomb.pkl"
    pkl.write_bytes(_bomb_as_dict_key())
    with pytest.raises(CheckpointError, match="object tree of more than") as err:
        _no_hang(lambda: load(pkl), seconds=10)
    assert "bomb.pkl" in _one_line(err)


def test_tuple_bomb_in_torch_files_is_refused(tmp_path):
    legacy = tmp_path / "legacy.pt"  # a bare pickle: torch's legacy reader would hash the key
    legacy.write_bytes(_bomb_as_dict_key())
    with pytest.raises(CheckpointError, match="object tree of more than"):
        _no_hang(lambda: load_state_dict_file(legacy), seconds=10)
    zipped = tmp_path / "zipped.pt"  # torch's zip layout with the bomb as data.pkl
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", _bomb_as_dict_key())
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    with pytest.raises(CheckpointError, match="data.pkl: an object tree of more than"):
        _no_hang(lambda: load_state_dict_file(zipped), seconds=10)
    # The same bomb as a persistent id and as constructor arguments.
    pid = b"\x80\x02}X\x01\x00\x00\x00a" + _tuple_bomb() + b"Qs."
    ctor = b"\x80\x02ccollections\nOrderedDict\n" + _tuple_bomb() + b"\x85R."
    for data in (pid, ctor):
        with pytest.raises(CheckpointError, match="object tree of more than"):
            check_pickle(io.BytesIO(data), "x")


def test_deep_nesting_is_refused():
    deep = b"\x80\x02" + b"(" * 5000 + b"N" + b"t" * 5000 + b"."
    with pytest.raises(CheckpointError, match="nested more than 200 levels"):
        check_pickle(io.BytesIO(deep), "x")


def test_cycles_are_refused():
    data = pickle.dumps((lambda x: (x.append(x), x)[1])([]), protocol=2)  # a list that contains itself
    with pytest.raises(CheckpointError, match="a cycle"):
        check_pickle(io.BytesIO(data), "x")


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x7f\x85R.",  # bytearray(2**31 - 2**24): zero bytes
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x7f\x85C\x01b\x87R.",
    ],
)
def test_allow_listed_builders_allocate_nothing_from_a_count(data):
    with pytest.raises(CheckpointError, match="refusing"):
        edm_pickle.read_edm_pickle(io.BytesIO(data))


def test_bytearrays_still_load():
    for protocol in (3, 4, 5):  # protocols 0-2 name the module __builtin__, which the allow-list never had
        data = pickle.dumps({"b": bytearray(b"\x00\xffab")}, protocol=protocol)
        assert edm_pickle.read_edm_pickle(io.BytesIO(data)) == {"b": bytearray(b"\x00\xffab")}


def test_huge_length_field_reads_only_the_file(tmp_path):
    pkl = tmp_path / "len.pkl"
    pkl.write_bytes(b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc")  # BINBYTES8 claiming 4 EiB
    with pytest.raises(CheckpointError, match="truncated or corrupt pickle"):
        _no_hang(lambda: load(pkl), seconds=10)


# --- L1: a pickle may not change the loader ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "global_",
    [b"dnnlib.util\nEasyDict\n", b"_codecs\nencode\n", b"torch._utils\n_rebuild_tensor_v2\n", b"numpy\ndtype\n"],
)
def test_build_on_allow_listed_globals_is_refused(tmp_path, global_):
    before = loader_state()
    for state in (
        b"N}X\x0b\x00\x00\x00__getitem__cbuiltins\nslice\ns\x86",  # (None, {"__getitem__": slice}): setattr
        b"}X\x0c\x00\x00\x00__defaults__)s",  # {"__defaults__": ()}: __dict__ update
    ):
        pkl = tmp_path / "build.pkl"
        pkl.write_bytes(b"\x80\x02c" + global_ + state + b"b.")
        with pytest.raises(CheckpointError, match="refusing BUILD"):
            load(pkl)
    assert loader_state() == before
    assert edm_pickle._EasyDict(a=1)["a"] == 1


def test_numpy_dtype_build_changes_a_copy_only():
    np_float = np.dtype("f8")
    data = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb."
    built = edm_pickle.read_edm_pickle(io.BytesIO(data))
    assert built is not np_float and built.byteorder == ">" and np.dtype("f8").byteorder == "="


# --- S1 and tensor kinds: weights a network cannot use ----------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "fmt"),
    # safetensors stores dense CPU data only: sparse and meta tensors exist only in .pt files
    [(bad, ".pt") for bad in ("nan", "inf", "int64", "sparse", "meta", "complex")]
    + [(bad, ".safetensors") for bad in ("nan", "inf", "int64", "complex")],
)
def test_unusable_weights_are_refused(tmp_path, tiny_gd, bad, fmt):
    _, sd = tiny_gd
    key = "out.2.weight"
    t = sd[key].clone()
    t = {
        "nan": lambda: t.index_put_((torch.tensor([0]),), torch.tensor(float("nan"))),
        "inf": lambda: t.fill_(float("inf")),
        "int64": lambda: t.long(),
        "sparse": lambda: t.to_sparse(),
        "meta": lambda: t.to("meta"),
        "complex": lambda: t.to(torch.complex64),
    }[bad]()
    path = tmp_path / f"bad{fmt}"
    (tmp_path / "bad.json").write_text(json.dumps(TINY_GD))
    bad_sd = dict(sd, **{key: t})
    if fmt == ".pt":
        torch.save(bad_sd, path)
    else:
        save_file(bad_sd, str(path))
    expected = {
        "nan": "non-finite values",
        "inf": "non-finite values",
        "int64": "dtype int64; weights must be floating point",
        "sparse": "sparse_coo tensor",
        "meta": "meta tensor",
        "complex": "dtype complex64",
    }[bad]
    with pytest.raises(CheckpointError, match=f"weight '{key}' .*{expected}") as err:
        load(path)
    _one_line(err)


def test_state_dict_reader_keeps_integer_buffers_but_refuses_nan(tmp_path):
    """A classifier's BatchNorm counters are int64; the network loaders alone require floating weights."""
    path = tmp_path / "classifier.pt"
    torch.save({"bn.num_batches_tracked": torch.tensor(5), "bn.weight": torch.ones(2)}, path)
    assert int(load_state_dict_file(path)["bn.num_batches_tracked"]) == 5
    torch.save({"bn.weight": torch.tensor([1.0, float("nan")])}, path)
    with pytest.raises(CheckpointError, match="weight 'bn.weight' has 1 non-finite values"):
        load_state_dict_file(path)
    torch.save({"bn.weight": torch.ones(2).to_sparse()}, path)
    with pytest.raises(CheckpointError, match="sparse_coo"):
        load_state_dict_file(path)
    torch.save({"bn.weight": torch.zeros(1).expand(10**12)}, path)  # 1.5 kB describing 10**12 elements
    with pytest.raises(CheckpointError, match="views 1000000000000 elements over 4 bytes of storage"):
        _no_hang(lambda: load_state_dict_file(path), seconds=10)


def test_nan_weights_make_convert_fail_and_write_nothing(tmp_path, tiny_gd, capsys):
    _, sd = tiny_gd
    path = tmp_path / "nan.pt"
    torch.save(dict(sd, **{"out.2.bias": torch.full_like(sd["out.2.bias"], float("nan"))}), path)
    (tmp_path / "nan.json").write_text(json.dumps(TINY_GD))
    with pytest.raises(CheckpointError, match="non-finite"):
        convert(path, tmp_path / "out" / "converted")
    assert cli_main(["convert", str(path), str(tmp_path / "out" / "converted")]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not (tmp_path / "out" / "converted.safetensors").exists()



@pytest.mark.parametrize(
    ("sidecar", "weights_change", "match"),
    [
        ({**TINY_GD, "num_channels": -32}, None, "num_channels must be an integer"),
        ({**TINY_GD, "config": "nope"}, None, "a named config takes no other keys"),
        ([1, 2], None, "a config must be a JSON object"),
        (TINY_GD, "drop", "missing keys"),
        (TINY_GD, "nan", "non-finite"),
    ],
)
def test_bad_config_or_weights_make_purify_fail_and_write_nothing(tmp_path, tiny_gd, capsys, sidecar,
                                                                   weights_change, match):
    _, sd = tiny_gd
    sd = dict(sd)
    if weights_change == "drop":
        sd.pop("out.2.bias")
    elif weights_change == "nan":
        sd["out.2.bias"] = torch.full_like(sd["out.2.bias"], float("nan"))
    torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), dtype=np.uint8))
    out = tmp_path / "out"
    args = ["purify", "-o", str(out), "--checkpoint", str(tmp_path / "m.pt"), "--steps", "2", str(tmp_path / "x.npy")]
    assert cli_main(args) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()  # neither the folder nor its .partial/ chunk store

# --- EDM pickles whose module state is malformed ----------------------------------------------------------------


def _set_init(key, value):
    return lambda state: state["_init_kwargs"].__setitem__(key, value)


def _int64_weight(state):
    model = state["_modules"]["model"].meta["state"]
    params = model["_modules"]["map_layer0"].meta["state"]["_parameters"]
    params["weight"] = torch.nn.Parameter(params["weight"].round().long(), requires_grad=False)


def _nan_weight(state):
    model = state["_modules"]["model"].meta["state"]
    params = model["_modules"]["map_layer0"].meta["state"]["_parameters"]
    params["weight"] = torch.nn.Parameter(torch.full_like(params["weight"], float("nan")))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.__setitem__("_modules", list(s["_modules"].values())), "_modules is a list, not a dict"),
        (lambda s: s.__setitem__("_parameters", [1]), "_parameters is a list, not a dict"),
        (lambda s: s.__setitem__("_non_persistent_buffers_set", [1]), "_non_persistent_buffers_set is a list"),
        (_set_init("model_channels", torch.tensor(8)), "model_channels must be an integer .* got a Tensor"),
        (_set_init("model_channels", np.array([8])), "model_channels must be an integer .* got a ndarray"),
        (_set_init("img_resolution", 0), r"img_resolution must be an integer in \[1, 4096\], got 0"),
        (_set_init("img_channels", -3), "img_channels must be an integer in"),
        (_set_init("num_blocks", 10**6), "num_blocks must be an integer in"),
        (lambda s: s.__setitem__("img_resolution", torch.tensor([8, 8])), "pickled img_resolution is a Tensor"),
        (lambda s: s.__setitem__("_init_kwargs", [1]), "does not record its constructor arguments"),
        (_int64_weight, "weight 'model.map_layer0.weight' has dtype int64"),
        (_nan_weight, "weight 'model.map_layer0.weight' has .* non-finite values"),
    ],
)
def test_malformed_edm_pickles(tmp_path, edit, match):
    pkl = tmp_path / "edm.pkl"
    pkl.write_bytes(edm_pickle_bytes(tiny_edm(), edit=edit))
    with pytest.raises(CheckpointError, match=match) as err:
        _no_hang(lambda: load(pkl), seconds=20)
    assert "edm.pkl" in _one_line(err)


def test_cli_exit_code_for_hostile_checkpoint(tmp_path, capsys):
    pkl = tmp_path / "bomb.pkl"
    pkl.write_bytes(_bomb_as_dict_key())
    assert cli_main(["convert", str(pkl), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.pkl" in err

