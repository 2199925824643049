"""Shared test fixtures.

The parity fixtures and real images live in ``tests/fixtures/`` (provenance in their READMEs), so a fresh
clone runs every test. On a machine without CUDA, Triton kernels run through the interpreter.
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
FIXTURES = REPO / "tests" / "fixtures"
PARITY = FIXTURES / "parity"
IMAGES = FIXTURES / "images"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return IMAGES


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
