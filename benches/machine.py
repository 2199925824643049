"""What the benches measure about the machine itself, in the same run as the benched code: its name, its matmul
peak per dtype, the FLOPs of a network evaluation.

A floor is only as good as its ceiling, so every ceiling here is measured, never taken from a data sheet.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def cpu_name() -> str:
    """The CPU as ``/proc/cpuinfo`` names it, its logical core count, whether it has AVX-512 bf16 / AMX, and the
    threads torch uses (e.g. ``"AMD EPYC, 2 cores, avx512_bf16, 1 thread"``)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    threads = torch.get_num_threads()
    return ", ".join([model, f"{os.cpu_count()} cores", *extras, f"{threads} thread{'s' if threads > 1 else ''}"])


def device_name(device: torch.device) -> str:
    """The GPU's name, or :func:`cpu_name`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cpu_seconds() -> float:
    """CPU seconds this process has used (all its threads). On a shared CPU, other jobs stretch a run's wall time
    by however long they hold the cores, but not the CPU time the run itself takes: the clock of the CPU rows."""
    return time.process_time()


def median_seconds(
    fn: Callable[[], object], repeats: int, device: torch.device, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median time of ``fn()`` on ``clock`` (default: wall) over ``repeats`` calls after one untimed call (device
    synchronised)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return statistics.median(times)


def matmul_rate(
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    repeats: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Dense matmul FLOP/s of this device in ``dtype`` with torch's current thread count, now: a 2048^3 (CPU) /
    8192^3 (GPU, TF32 off for float32) product, median of ``repeats`` (default 5 on the CPU, 20 on a GPU) after
    a warm-up, timed on ``clock`` (wall by default; :func:`cpu_seconds` gives FLOPs per CPU-second)."""
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 2048
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 peak, not TF32's; restored for the benched code
    try:
        seconds = median_seconds(lambda: a @ b, repeats or (20 if dev.type == "cuda" else 5), dev, clock)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / seconds


@functools.cache
def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """:func:`matmul_rate`, measured once per session, dtype and device (for a GPU, whose rate does not drift
    with other jobs; a shared CPU's benches measure it in every round instead)."""
    return matmul_rate(dtype, device)


def network_flops(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, int]:
    """``(forward, input-VJP)`` FLOPs of ``fn`` at ``x`` as ``torch.utils.flop_counter`` counts them
    (convolutions, matmuls, attention; 2 FLOPs per multiply-add). The VJP is the backward pass to ``x`` alone
    (the caller freezes the weights), counted as (forward + backward) - forward."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(x)
    forward = counter.get_total_flops()
    xg = x.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        # backward(), not autograd.grad(): the flop counter's hooks do not support autograd.grad on a leaf.
        fn(xg).sum().backward()
    return forward, counter.get_total_flops() - forward
