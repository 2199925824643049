"""Shared machinery of the op benches (``pytest benches/``; docs/DESIGN.md §5).

Every bench times one provider of one op at one shape and records, in pytest-benchmark's ``extra_info``: its
time (printed only on a GPU), its speed-up over the reference measured in the same session, and its fraction of
the floor ``max(bytes / copy bandwidth, FP32 FLOPs / FP32 peak)``. Both ceilings are measured in the same
session: copy bandwidth by a large tensor copy (bytes read + written), FP32 peak by a large float32 matmul (TF32
off on a GPU). A table of all results is printed at the end.

Timing: on the CPU, the process's CPU time (run one thread: ``OMP_NUM_THREADS=1``) of pytest-benchmark's
pedantic rounds (median of a few rounds after one warm-up round; the ceilings on the same clock). On a
GPU, the median of CUDA-graph replays (``triton.testing.do_bench_cudagraph``; plain ``do_bench`` with CUDA
events if capture fails), each call cycling through enough input sets to exceed L2 so the cache is not timed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from benches.machine import cpu_seconds, device_name, matmul_peak, matmul_rate, median_seconds
from mimicfast.ops import _dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
PROVIDERS = ("reference", "cpp", "triton", "cuda", "compile")
# A shared CPU's other jobs stretch wall time, not the CPU time a call takes: CPU rows and ceilings use the latter.
CLOCK = time.perf_counter if ON_GPU else cpu_seconds
CIFAR = (256, 3, 32, 32)
IMAGENET = [(8, 3, 256, 256), (32, 3, 256, 256)] + ([(64, 3, 256, 256)] if ON_GPU else [])
SHAPES = [CIFAR, *IMAGENET]
# torch.compile of the reference on the CPU takes minutes per op and shape (and recompiles per shape):
# by default it runs only for l1_residual at the CIFAR shape there. MIMICFAST_BENCH_COMPILE=all runs it
# everywhere, =none nowhere.
COMPILE_SCOPE = os.environ.get("MIMICFAST_BENCH_COMPILE", "all" if ON_GPU else "l1_residual-cifar")


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` (pytest's default pattern is test_*.py; files named on the command line are
    collected by pytest itself)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def cases() -> list[Any]:
    """(shape, provider) parameters, reference first for each shape so its time is known to the others."""
    return [pytest.param(s, p, id=f"{shape_id(s)}-{p}") for s in SHAPES for p in PROVIDERS]


def skip_reason(op: str, shape: tuple[int, ...], provider: str) -> str | None:
    """Why ``provider`` does not run here (None when it does)."""
    if provider == "reference":
        return None
    if provider == "compile":
        if COMPILE_SCOPE == "none" or (COMPILE_SCOPE != "all" and (op != "l1_residual" or shape != CIFAR)):
            return f"torch.compile on the CPU is bounded to l1_residual at CIFAR shape (MIMICFAST_BENCH_COMPILE={COMPILE_SCOPE})"
        return None
    if provider == "triton" and not ON_GPU:
        return "Triton runs on the CPU only in its interpreter, which is not benchmarked"
    if provider == "cpp" and ON_GPU:
        return "the C++ CPU kernels are benchmarked on CPU tensors (no GPU run)"
    return _dispatch.why_unavailable(provider, DEVICE.type)


@dataclass
class Ceilings:
    """Measured ceilings of this machine: copy bandwidth (bytes/s, read + write) and FP32 peak (FLOP/s)."""

    device: str
    bandwidth: float
    fp32_peak: float


@dataclass
class Result:
    op: str
    shape: str
    provider: str
    seconds: float
    speedup: float | None
    floor_s: float
    bound: str
    info: dict[str, Any] = field(default_factory=dict)


RESULTS: list[Result] = []
REFERENCE_TIMES: dict[tuple[str, str], float] = {}


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    return median_seconds(fn, repeats, DEVICE, CLOCK)


@pytest.fixture(scope="session")
def ceilings() -> Ceilings:
    if ON_GPU:
        src = torch.empty(512 * 2**20, dtype=torch.uint8, device=DEVICE).random_()
        dst = torch.empty_like(src)
        import triton.testing

        copy_s = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") * 1e-3
    else:
        src = torch.randn(64 * 2**20)  # 256 MiB of float32, far beyond the caches
        dst = torch.empty_like(src)
        copy_s = _median_time(lambda: dst.copy_(src), 5)
    bandwidth = 2 * src.numel() * src.element_size() / copy_s
    fp32_peak = matmul_peak(torch.float32, "cuda") if ON_GPU else matmul_rate(torch.float32, clock=cpu_seconds)
    return Ceilings(device_name(DEVICE), bandwidth, fp32_peak)


def _time(benchmark, fn: Callable[[], Any], shape: tuple[int, ...], sets: int) -> tuple[float, str]:
    """Seconds per call of ``fn`` (which runs ``sets`` calls, one per input set) and the method used."""
    if ON_GPU:
        import triton.testing

        benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=5, warmup_rounds=1)
        try:
            ms, how = triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median"), "cuda-graph median"
        except Exception:  # noqa: BLE001 - capture can fail for eager autograd; fall back to events
            ms, how = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"), "cuda-event median"
        return ms * 1e-3 / sets, how
    rounds = 1 if shape[0] * shape[2] * shape[3] > 2**20 else 3
    cpu_times: list[float] = []

    def timed() -> None:
        start = cpu_seconds()
        fn()
        cpu_times.append(cpu_seconds() - start)

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)
    return statistics.median(cpu_times[-rounds:]) / sets, f"CPU time, median of {rounds} rounds"


def input_sets(make: Callable[[int], tuple[torch.Tensor, ...]], bytes_per_set: int) -> list[tuple[torch.Tensor, ...]]:
    """Enough input sets to exceed the GPU's L2 (4x its size); one on the CPU."""
    if not ON_GPU:
        return [make(0)]
    l2 = torch.cuda.get_device_properties(DEVICE).L2_cache_size
    return [make(i) for i in range(max(1, -(-4 * l2 // bytes_per_set)))]


@pytest.fixture
def run_bench(benchmark, ceilings: Ceilings):
    """``run_bench(op, shape, provider, call, make_inputs, bytes_moved, flops, reference_call)``.

    ``call(*inputs)`` runs the provider once on one input set; ``make_inputs(seed)`` builds one set;
    ``bytes_moved`` / ``flops`` are the floor counts of one call; ``reference_call`` times the reference if this
    session has not yet (so every speed-up is measured in the same run).
    """

    def run(op, shape, provider, call, make_inputs, bytes_moved, flops, reference_call):
        sets = input_sets(make_inputs, bytes_moved)
        seconds, how = _time(benchmark, lambda: [call(*s) for s in sets], shape, len(sets))
        key = (op, shape_id(shape))
        if provider == "reference":
            REFERENCE_TIMES[key] = seconds
        elif key not in REFERENCE_TIMES:
            REFERENCE_TIMES[key] = _median_time(lambda: [reference_call(*s) for s in sets], 1) / len(sets)
        bytes_s, flops_s = bytes_moved / ceilings.bandwidth, flops / ceilings.fp32_peak
        floor_s, bound = (bytes_s, "bytes") if bytes_s >= flops_s else (flops_s, "fp32")
        speedup = REFERENCE_TIMES[key] / seconds
        info = {
            "device": ceilings.device,
            "time_s": seconds,
            "timing": how,
            "speedup_vs_reference": speedup,
            "floor_s": floor_s,
            "floor_bound": bound,
            "fraction_of_floor": floor_s / seconds,
            "bytes_floor_s": bytes_s,
            "fp32_floor_s": flops_s,
            "bandwidth_Bps": ceilings.bandwidth,
            "fp32_peak_flops": ceilings.fp32_peak,
        }
        benchmark.extra_info.update(info)
        RESULTS.append(Result(op, shape_id(shape), provider, seconds, speedup, floor_s, bound, info))

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The op table: speed-up over the reference and fraction of the floor; absolute times only on a GPU (a
    shared CPU's times say more about its load than about the code, its ratios within one run do not)."""
    if not RESULTS:
        return
    tr = terminalreporter
    info = RESULTS[0].info
    tr.section("mimicfast op benches")
    tr.write_line(
        f"device: {info['device']}; measured copy bandwidth {info['bandwidth_Bps'] / 1e9:.1f} GB/s, "
        f"FP32 peak {info['fp32_peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    times = f"{'time':>11}" if ON_GPU else ""
    floors = f"{'floor':>10} " if ON_GPU else ""
    tr.write_line(f"{'op':<20}{'shape':<14}{'provider':<10}{times}{'vs ref':>9} {floors}{'bound':<6}{'of floor':>9}")
    order = {shape_id(s): i for i, s in enumerate(SHAPES)}
    for r in sorted(RESULTS, key=lambda r: (r.op, order.get(r.shape, 0), PROVIDERS.index(r.provider))):
        speed = "" if r.provider == "reference" else f"{r.speedup:.1f}x"
        times = f"{_fmt(r.seconds):>11}" if ON_GPU else ""
        floors = f"{_fmt(r.floor_s):>10} " if ON_GPU else ""
        fraction = f"{r.floor_s / r.seconds:>9.1%}"
        tr.write_line(f"{r.op:<20}{r.shape:<14}{r.provider:<10}{times}{speed:>9} {floors}{r.bound:<6}{fraction}")


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"
