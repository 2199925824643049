"""The benches' bookkeeping, checked without a GPU: FLOP counts, paired ratios, and which baseline a row divides by."""

from __future__ import annotations

import pytest
import torch

from benches import bench_purify
from benches.bench_purify import VARIANTS, _eager_seconds, _median_ratio
from benches.machine import network_flops
from mimicfast.presets import get_preset


def test_network_flops_counts_forward_and_input_vjp() -> None:
    layer = torch.nn.Linear(4, 3, bias=False).requires_grad_(False)
    forward, vjp = network_flops(layer, torch.randn(2, 4))
    assert forward == 2 * 2 * 4 * 3  # 2 FLOPs per multiply-add
    assert vjp == 2 * 2 * 3 * 4  # grad_input only: frozen weights get no gradient


def test_ratios_pair_runs_of_the_same_round() -> None:
    times = {"slow": [2.0, 8.0, 3.0], "fast": [1.0, 4.0, 3.0]}  # the median of each list would give 3 / 3
    assert _median_ratio(times, "slow", "fast") == (2.0, 1.0, 2.0)


@pytest.fixture
def per_step_times(monkeypatch):
    """Eager per-step seconds as if measured: unguided / guided steps cost 1 / 3 in fp32 and 0.5 / 2 in bf16."""
    monkeypatch.delenv("MIMICFAST_BENCH_FULL_EAGER", raising=False)
    monkeypatch.setattr(bench_purify, "_EAGER_STEPS", {
        ("cfg", 1, "fp32"): {False: 1.0, True: 3.0},
        ("cfg", 1, "bf16"): {False: 0.5, True: 2.0},
    })  # fmt: skip


def test_eager_baseline_follows_the_rows_window(per_step_times) -> None:
    """At the same T, the windowed row is compared with a windowed eager loop and the bare row with a bare one."""
    paper = get_preset("paper").replace(steps=10)  # the window (0.2, 0.5) guides k = 2..5: 4 of 10 steps
    windowed, _ = _eager_seconds("cfg", 1, VARIANTS["fp32"], None, paper, None, [0])
    bare, _ = _eager_seconds("cfg", 1, VARIANTS["fp32"], None, paper.replace(window=None), None, [0])
    assert windowed == 6 * 1.0 + 4 * 3.0
    assert bare == 10 * 3.0


def test_eager_baseline_has_the_rows_precision(per_step_times) -> None:
    paper = get_preset("paper").replace(steps=10, window=None)
    assert _eager_seconds("cfg", 1, VARIANTS["bf16"], None, paper, None, [0])[0] == 10 * 2.0
    assert _eager_seconds("cfg", 1, VARIANTS["bf16-nhwc"], None, paper, None, [0])[0] == 10 * 2.0
    assert _eager_seconds("cfg", 1, VARIANTS["fp32"], None, paper, None, [0])[0] == 10 * 3.0
