"""Preset: every knob is checked when a preset is built or replaced, and numbers are normalised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimicfast.errors import InputError
from mimicfast.presets import PRESETS, default_scale, get_preset
from mimicfast.purify_options import resolve_preset


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(scale=float("nan")), "scale"),
        (dict(scale=float("inf")), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(scale="1"), "scale"),
        (dict(eta=float("nan")), "eta"),
        (dict(eta=1.5), "eta"),
        (dict(reduction_batch=float("nan")), "reduction_batch"),
        (dict(reduction_batch=0), "reduction_batch"),
        (dict(reduction_batch=2.0), "reduction_batch"),
        (dict(steps=0), "steps"),
        (dict(steps=1001), "steps"),
        (dict(steps=True), "steps"),
        (dict(window="ab"), "window"),
        (dict(window=(0.2,)), "window"),
        (dict(window=(0.1, 0.2, 0.3)), "window"),
        (dict(window=(0.5, 0.2)), "window"),
        (dict(window=(0.2, float("nan"))), "window"),
        (dict(long_range=1), "long_range"),
        (dict(clip_denoised="yes"), "clip_denoised"),
        (dict(upsample="bilinear"), "upsample"),
        (dict(name=3), "name"),
        (dict(sclae=2.0), "unknown preset field"),
    ],
)
def test_bad_fields_name_the_field(change, match) -> None:
    with pytest.raises(InputError, match=match):
        get_preset("paper").replace(**change)


def test_numbers_are_normalised() -> None:
    p = get_preset("released").replace(
        steps=np.int64(50), scale=np.float32(0.5), eta=torch.tensor(0.0), reduction_batch=np.int32(8),
        window=[0, np.float64(0.5)],
    )  # fmt: skip
    assert (p.steps, p.scale, p.eta, p.reduction_batch, p.window) == (50, 0.5, 0.0, 8, (0.0, 0.5))
    assert type(p.steps) is int and type(p.scale) is float and type(p.window) is tuple


def test_builtin_presets_are_valid_and_unknown_names_refused() -> None:
    assert set(PRESETS) == {"paper", "released"}
    with pytest.raises(InputError, match="unknown preset"):
        get_preset("nope")


def test_default_scale_is_the_models_tuned_scale_for_a_named_preset() -> None:
    tuned = {"released": 1000.0}
    assert default_scale("released", tuned) == 1000.0
    assert default_scale("paper", tuned) == PRESETS["paper"].scale  # not declared: the preset's own
    assert default_scale("released", {}) == PRESETS["released"].scale
    assert default_scale(PRESETS["released"], tuned) == PRESETS["released"].scale  # a Preset object keeps its own


def test_resolve_preset_applies_the_models_scale_unless_one_is_given() -> None:
    class Tuned:
        image_size, guidance_scales = 32, {"released": 1000.0}

    assert resolve_preset("released", None, {}, Tuned()).scale == 1000.0
    assert resolve_preset("released", None, {"scale": 3000}, Tuned()).scale == 3000.0
    assert resolve_preset("released", None, {}, None).scale == PRESETS["released"].scale
    assert resolve_preset("paper", None, {}, Tuned()).steps == 100  # T still follows the image size
