"""mimicfast.upsample_mode: the mode enum parses what the public ops accept and names F.interpolate's mode."""

from __future__ import annotations

import pytest

from mimicfast.errors import InputError
from mimicfast.upsample_mode import SCALE, UpsampleMode


def test_codes_and_factor():
    assert SCALE == 4
    assert {m.name: int(m) for m in UpsampleMode} == {"NONE": 0, "BICUBIC": 1, "NEAREST": 2}


@pytest.mark.parametrize(
    "given, expected",
    [
        ("bicubic", UpsampleMode.BICUBIC),
        ("nearest", UpsampleMode.NEAREST),
        (None, UpsampleMode.NONE),
        ("none", UpsampleMode.NONE),
        (UpsampleMode.NEAREST, UpsampleMode.NEAREST),
    ],
)
def test_parse(given, expected):
    assert UpsampleMode.parse(given) is expected


@pytest.mark.parametrize("given", ["bilinear", 1, ""])
def test_parse_rejects_the_rest(given):
    with pytest.raises(InputError, match="unknown upsample mode"):
        UpsampleMode.parse(given)


def test_interpolate_mode():
    assert [m.interpolate_mode for m in UpsampleMode] == [None, "bicubic", "nearest"]
