"""Zip checkpoints whose members are compressed (a ``torch.save`` file re-zipped; ``torch.load`` reads it): the
loader inflates them instead of memory-mapping compressed bytes as tensor data, and refuses what it cannot read."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from mimicfast.errors import CheckpointError
from mimicfast.models import load
from mimicfast.models.loader import load_state_dict_file
from tests.models._archives import rezip


def test_small_tensors_of_a_deflated_archive_are_read_as_saved(tmp_path):
    sd = {"w": torch.arange(16, dtype=torch.float32).reshape(4, 4), "b": torch.linspace(-1, 1, 7)}
    torch.save(sd, tmp_path / "plain.pt")
    rezip(tmp_path / "plain.pt", tmp_path / "deflated.pt")
    assert torch.load(tmp_path / "deflated.pt", weights_only=True)["w"].equal(sd["w"])  # a valid archive
    got = load_state_dict_file(tmp_path / "deflated.pt")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_a_deflated_network_checkpoint_loads_like_the_stored_one(tmp_path, parity_dir):
    rezip(parity_dir / "gd_unet_small_state_dict.pt", tmp_path / "net.pt")
    (tmp_path / "net.json").write_text(json.dumps({"family": "guided_diffusion", "config": "gd-small-test"}))
    expected = load(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test").state_dict()
    got = load(tmp_path / "net.pt").state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_other_zip_compressions_are_refused_by_name(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pt")
    rezip(tmp_path / "plain.pt", tmp_path / "bz.pt", zipfile.ZIP_BZIP2)
    with pytest.raises(CheckpointError, match="compression method 12; torch reads only stored or DEFLATE") as err:
        load_state_dict_file(tmp_path / "bz.pt")
    assert "\n" not in str(err.value)


def test_an_archive_that_inflates_past_its_bound_is_refused(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pt")
    rezip(tmp_path / "plain.pt", tmp_path / "bomb.pt", extra={"padding": bytes(80 * 2**20)})
    assert (tmp_path / "bomb.pt").stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="compressed zip archive that would inflate to"):
        load_state_dict_file(tmp_path / "bomb.pt")
