"""Shared test fixtures.

``../shared`` (parity fixtures, real images) sits beside the checkout; tests that need it skip
cleanly when it is absent. On a machine without CUDA, Triton kernels run through the interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before any Triton kernel is decorated (import time of mimicfast.kernels.*).
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIMICFAST_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "fixtures" / "parity"
IMAGES = SHARED / "fixtures" / "images"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY}")
    return PARITY


@pytest.fixture(scope="session")
def images_dir() -> Path:
    if not IMAGES.is_dir():
        pytest.skip(f"fixture images not found at {IMAGES}")
    return IMAGES


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
