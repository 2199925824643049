"""mimicfast.validate: the one set of checks for images, labels, norms, budgets and counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mimicfast.errors import InputError
from mimicfast.validate import check_count, check_eps, check_images, check_labels, check_norm, plural


def test_images_pass_through_and_bad_ones_are_named() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert check_images(x, channels=3, size=8) is x
    cases = [
        ([1.0], "torch.Tensor"), (torch.rand(3, 8, 8), "rank 4"), (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "float"),
        (torch.rand(0, 3, 8, 8), "empty"), (torch.rand(1, 3, 8, 8).to_sparse(), "dense"),
        (torch.empty(1, 3, 8, 8, device="meta"), "meta"), (torch.full((1, 3, 8, 8), math.nan), "NaN"),
        (torch.full((1, 3, 8, 8), 1.5), r"\[0, 1\]"),
    ]  # fmt: skip
    for bad, match in cases:
        with pytest.raises(InputError, match=match):
            check_images(bad)
    with pytest.raises(InputError, match="takes 1 channel, got 3"):
        check_images(x, channels=1)
    with pytest.raises(InputError, match="takes 32x32 images, got 8x8"):
        check_images(x, size=32)


def test_plural() -> None:
    assert (plural(1, "channel"), plural(3, "channel")) == ("1 channel", "3 channels")


def test_labels() -> None:
    y = torch.tensor([0, 9])
    assert check_labels(y, 2, classes=10) is y
    for bad, match in ((torch.tensor([0.0, 1.0]), "int64"), (torch.tensor([0]), "int64"), ([0, 1], "list")):
        with pytest.raises(InputError, match=match):
            check_labels(bad, 2)
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        check_labels(torch.tensor([0, 10]), 2, classes=10)


def test_norms_budgets_counts() -> None:
    assert check_norm("L2") == "L2"
    with pytest.raises(InputError, match="Linf, L2"):
        check_norm("l2")
    assert check_eps(np.float32(0.5)) == 0.5 and check_eps(math.inf, finite=False) == math.inf
    for bad in (math.nan, -0.1, True, "0.1", math.inf):
        with pytest.raises(InputError, match="eps"):
            check_eps(bad)
    assert check_count(np.int64(3), "--draws") == 3
    for bad in (0, -1, 1.0, True, None):
        with pytest.raises(InputError, match="--batch-size must be an integer >= 1"):
            check_count(bad, "--batch-size")
