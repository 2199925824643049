"""Fuzzing the loader: random mutations of tiny valid checkpoints and configs must each end in a loaded network
or one CheckpointError, within a time bound, and leave the loader's own objects unchanged.

The cases run in a forked child so that a hang inside C code (hashing, a blocking read) fails the test instead of
stalling the suite. The run is bounded in time (``MIMICFAST_FUZZ_SECONDS``, default 3 s of cases); the sequence of
cases is fixed by ``MIMICFAST_FUZZ_SEED`` (default 0), and a failure names the seed and the case index.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import pickletools
import random
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mimicfast.errors import CheckpointError
from mimicfast.models import load
from mimicfast.models.configs import GD_CONFIGS
from tests.models._edm_util import edm_pickle_bytes, loader_state, tiny_edm
from tests.models.test_hostile_checkpoints import TINY_GD

SEED = int(os.environ.get("MIMICFAST_FUZZ_SEED", "0"))
SECONDS = float(os.environ.get("MIMICFAST_FUZZ_SECONDS", "3"))
GRACE_S = 60.0  # one slow case on a loaded machine is not a hang; a minute is

# Opcode bytes worth splicing into a pickle: object building, memo, stack and mark manipulation.
_OPCODES = b"bsRu\x81\x85\x86\x87t(2012h)q\x94.}]el\x8fN"
_JSON_VALUES = [0, -1, 1, 2**31, 10**8, -32, 1e308, "0", "", "a,b", None, True, [], {}, [0] * 20, [[[[1]]]],
                "1,2,3,4,5,6,7,8,9", 0.5, -0.0]
_FLOATS = [math.nan, math.inf, -math.inf]


def _opcode_positions(data: bytes) -> list[int]:
    return [pos for _, _, pos in pickletools.genops(io.BytesIO(data))]


def _mutate_bytes(data: bytes, positions: list[int], rng: random.Random) -> tuple[bytes, str]:
    """One random structural mutation; positions (opcode offsets) focus it on the pickle's structure."""
    if not data:
        return bytes([rng.choice(_OPCODES)]), "one opcode"
    buf = bytearray(data)
    at = rng.choice(positions) if positions and rng.random() < 0.8 else rng.randrange(len(buf))
    kind = rng.randrange(6)
    if kind == 0:
        buf[at] = rng.choice(_OPCODES)
    elif kind == 1:
        buf[at:at] = bytes(rng.choice(_OPCODES) for _ in range(rng.randint(1, 6)))
    elif kind == 2:
        del buf[at : at + rng.randint(1, 16)]
    elif kind == 3:
        buf = buf[: rng.randrange(len(buf))]
    elif kind == 4:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    else:
        buf[at : at + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 4])
    return bytes(buf), f"kind {kind} at {at}"


def _zip_with(data_pkl: bytes, original: bytes) -> bytes:
    """torch's zip layout of ``original`` with its data.pkl replaced (stored, as torch writes it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()


def _bases(folder: Path) -> dict:
    from mimicfast.models import guided_diffusion_unet
    from mimicfast.models.random_init import randomize_weights

    gd_kwargs = {k: v for k, v in TINY_GD.items() if k != "family"}
    sd = randomize_weights(guided_diffusion_unet(**gd_kwargs)).state_dict()
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save(sd, zipped)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    st = folder / "st.safetensors"
    save_file(sd, str(st))
    with zipfile.ZipFile(io.BytesIO(zipped.getvalue())) as z:
        data_pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    torch.save(sd, folder / "gd_sd.pt")  # targets of the config-dict cases
    torch.save(tiny_edm().state_dict(), folder / "edm_sd.pt")
    edm = edm_pickle_bytes(tiny_edm())
    return {
        "gd zip data.pkl": (".pt", data_pkl, _opcode_positions(data_pkl), zipped.getvalue()),
        "gd zip bytes": (".pt", zipped.getvalue(), [], None),
        "gd legacy": (".pt", legacy.getvalue(), _opcode_positions(legacy.getvalue()), None),
        "gd safetensors": (".safetensors", st.read_bytes(), list(range(64)), None),
        "edm pkl": (".pkl", edm, _opcode_positions(edm), None),
        "gd config json": (".json", json.dumps(TINY_GD).encode(), [], zipped.getvalue()),
    }


def _config_case(rng: random.Random) -> dict:
    """A valid tiny config (GD or EDM) with 1-3 values replaced by hostile ones (or a key added)."""
    if rng.random() < 0.5:
        cfg = dict(TINY_GD)
    else:
        net = tiny_edm()
        cfg = {"family": "edm", "precond_class": rng.choice(["EDMPrecond", "VPPrecond", "iDDPMPrecond"]),
               **net.init_kwargs}
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*cfg, "M", "extra", *GD_CONFIGS["gd-small-test"]])
        cfg[key] = rng.choice(_JSON_VALUES + _FLOATS)
    return cfg


def _run_cases(conn, folder: Path, seed: int, seconds: float) -> None:
    """Child process: run cases until the time is up; report each case before running it, then a summary."""
    rng = random.Random(seed)
    bases = _bases(folder)
    gd_config = json.dumps(TINY_GD)
    before = loader_state()
    unexpected: list[str] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline or n < len(bases) + 1:
        name = rng.choice([*bases, "config dict"])
        case = folder / f"case{n}"
        if name == "config dict":
            cfg = _config_case(rng)
            detail = json.dumps(cfg)[:300]
            args = (folder / ("edm_sd.pt" if cfg["family"] == "edm" else "gd_sd.pt"), cfg)
        else:
            suffix, data, positions, original = bases[name]
            mutated, detail = _mutate_bytes(data, positions, rng)
            if name == "gd zip data.pkl":
                mutated = _zip_with(mutated, original)
            if name == "gd config json":
                (case.with_suffix(".pt")).write_bytes(original)
                case.with_suffix(".json").write_bytes(mutated)
                args = (case.with_suffix(".pt"),)
            else:
                case.with_suffix(suffix).write_bytes(mutated)
                if suffix != ".pkl":
                    case.with_suffix(".json").write_text(gd_config)
                args = (case.with_suffix(suffix),)
        conn.send(("case", n, name, detail))
        try:
            model = load(*args)
            assert not model.training and all(bool(torch.isfinite(t).all()) for t in model.state_dict().values())
        except CheckpointError as e:
            if "\n" in str(e):
                unexpected.append(f"case {n} ({name}, {detail}): multi-line message {str(e)[:200]!r}")
        except Exception as e:  # noqa: BLE001 -- what the fuzz test is looking for
            unexpected.append(f"case {n} ({name}, {detail}): {type(e).__name__}: {str(e)[:200]}")
        n += 1
    conn.send(("done", n, unexpected, loader_state() == before))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="runs the cases in a forked child")
def test_fuzzed_checkpoints_give_only_checkpoint_errors(tmp_path):
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_run_cases, args=(send, tmp_path, SEED, SECONDS), daemon=True)
    child.start()
    send.close()
    last = "setup"
    try:
        while True:
            if not receive.poll(SECONDS + GRACE_S):
                pytest.fail(f"seed {SEED}: no progress for {SECONDS + GRACE_S:.0f} s (a hang?) after {last}")
            try:
                message = receive.recv()
            except EOFError:
                child.join(5)
                pytest.fail(f"seed {SEED}: the loader process died (exit {child.exitcode}) in {last}")
            if message[0] == "done":
                break
            last = f"case {message[1]} ({message[2]}, {message[3]})"
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
    _, count, unexpected, unchanged = message
    assert not unexpected, f"seed {SEED}, {count} cases:\n" + "\n".join(unexpected)
    assert unchanged, f"seed {SEED}: a checkpoint changed the loader's own objects"
    assert count > 6
