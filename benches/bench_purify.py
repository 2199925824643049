"""End-to-end purification benches: the fast path against the eager reference, per image.

GPU configs (skipped without CUDA), random weights (speed does not depend on them; every parameter is redrawn
so no layer multiplies zeros, which can run faster than real data):

* guided-diffusion ImageNet-256 uncond (552M parameters), paper preset, T = 1000 with the window (301 guided
  steps), batch 1, 8, 32;
* EDM DDPM++ CIFAR-10 (EDMPrecond + SongUNet, 56M), paper preset, T = 100 (31 guided steps), batch 1, 256.

Each row reports seconds per image and images/s of the fast path (steady state: capture is timed apart as
``setup_s``), peak device memory, the eager reference (:func:`mimicfast.api.purify_batch`, fp32) measured
in the same run and the speed-up over it, the ratio to the paper's 156 s (window) and 268 s (no window) per
ImageNet image on an RTX 4090, and the fraction of the FLOP floor: ``T * forward + guided * input-VJP``
FLOPs per image (``tests/fixtures/parity/flops.json``) at the bf16 dense-matmul rate measured on the
device at session start (docs/DESIGN.md §5 quotes 790 TFLOP/s for an H100).

The eager reference at T = 1000 takes minutes per image, so by default it is timed per step: ``s`` steps
with every step unguided and ``s`` with every step guided (``MIMICFAST_BENCH_EAGER_STEPS``, default 4), and
the full loop's time is ``unguided * t_unguided + guided * t_guided`` (``eager_method`` says which);
``MIMICFAST_BENCH_FULL_EAGER=1`` runs the whole eager loop instead.

The fast path runs the whole loop by default (``fast_method`` = "full loop"). Where device time is short,
``MIMICFAST_BENCH_FAST_STEPS=k`` instead replays the captured graphs over ``k`` consecutive unguided steps
and ``k`` consecutive guided steps of the real loop (3 rounds, median; a replay of one kind costs the same at
every step, only the step index differs) and reports ``unguided * t_unguided + guided * t_guided``
(``fast_method`` says so). ``scripts/device_check.sh`` times one configuration both ways to check this.

The CPU bench runs anywhere: the bundled Fashion-MNIST UNet (or, without it, the guided-diffusion parity
fixture) for 10 paper steps at batch 2, eager vs the fast path without graphs, 3 interleaved rounds (about 0.8 s
per run on one idle core; 85 s for the whole bench on the shared, loaded 2-core build machine). On the CPU the
fast path is the same arithmetic with no graphs (outputs asserted bit-identical), so its ratio is about 1x.

Run: ``pytest benches/bench_purify.py -s`` (``-s`` shows the table lines). Environment:
``MIMICFAST_BENCH_VARIANTS`` (comma list of bf16, bf16-nhwc, fp16, fp32, bf16-chunk8, bf16-compile,
bf16-plainvjp; default bf16), ``MIMICFAST_BENCH_OUT`` (append each row as JSON to this file).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from dataclasses import dataclass

import pytest
import torch

from mimicfast.api import purify_batch
from mimicfast.fast import FastPurifier
from mimicfast.models.random_init import randomize_weights
from mimicfast.presets import get_preset
from mimicfast.sampling import as_denoiser
from mimicfast.schedules import window_mask
from tests.conftest import PARITY

PAPER_SECONDS_PER_IMAGE = {"window": 156.0, "no_window": 268.0}  # RTX 4090, ImageNet 256, paper
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@dataclass(frozen=True)
class Variant:
    """A fast-path policy to time."""

    autocast: str | None
    channels_last: bool = False
    chunk: int = 1
    compile: bool = False
    input_only_vjp: bool | None = None


VARIANTS = {
    "bf16": Variant("bf16"),
    "bf16-nhwc": Variant("bf16", channels_last=True),
    "fp16": Variant("fp16"),
    "fp32": Variant(None),
    "bf16-chunk8": Variant("bf16", chunk=8),
    "bf16-compile": Variant("bf16", compile=True),
    "bf16-plainvjp": Variant("bf16", input_only_vjp=False),
}
GPU_CASES = [("gd256", 1), ("gd256", 8), ("gd256", 32), ("edm-cifar10", 1), ("edm-cifar10", 256)]


def _variants() -> list[str]:
    names = [v.strip() for v in os.environ.get("MIMICFAST_BENCH_VARIANTS", "bf16").split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown MIMICFAST_BENCH_VARIANTS {unknown}; choose from {sorted(VARIANTS)}")
    return names


def _gd256() -> torch.nn.Module:
    from mimicfast.models import GD_CONFIGS, guided_diffusion_unet

    with torch.device("cuda"):
        return randomize_weights(guided_diffusion_unet(**GD_CONFIGS["imagenet256-uncond"])).requires_grad_(False)


def _edm_cifar10() -> torch.nn.Module:
    from mimicfast.models import edm_network

    spec = json.loads((PARITY / "edm_songunet_ddpmpp_cifar10_full_keys.json").read_text())
    with torch.device("cuda"):
        return randomize_weights(edm_network(spec["precond_class"], **spec["kwargs"])).requires_grad_(False)


CONFIGS = {
    "gd256": dict(build=_gd256, shape=(3, 256, 256), steps=1000, flops="gd_unet_256_uncond",
                  vjp="backward_input_only_ideal", paper=True),
    "edm-cifar10": dict(build=_edm_cifar10, shape=(3, 32, 32), steps=100, flops="edm_songunet_ddpmpp_cifar10_32",
                        vjp="backward_input_only", paper=False),
}  # fmt: skip
_MODELS: dict[str, torch.nn.Module] = {}
_EAGER: dict[tuple[str, int], tuple[float | None, str]] = {}


def _model(config: str) -> torch.nn.Module:
    if config not in _MODELS:
        _MODELS.clear()  # one large model on the device at a time
        torch.cuda.empty_cache()
        _MODELS[config] = CONFIGS[config]["build"]()
    return _MODELS[config]


def _synced(fn):
    """``fn()`` then wait for the device; returns (result, wall seconds)."""
    if CUDA:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if CUDA:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


@pytest.fixture(scope="session")
def matmul_peak() -> float:
    """bf16 dense matmul FLOP/s on this device (8192^3, median of 20 timed with CUDA events)."""
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times)


def _eager_seconds(config: str, batch: int, denoiser, preset, y, seeds) -> tuple[float | None, str]:
    """Seconds of the eager reference for the whole loop of one batch (see the module docstring)."""
    key = (config, batch)
    if key in _EAGER:
        return _EAGER[key]
    try:
        if os.environ.get("MIMICFAST_BENCH_FULL_EAGER") == "1":
            _synced(lambda: purify_batch(denoiser, y, preset.replace(steps=2), seeds))  # warm-up
            result = (_synced(lambda: purify_batch(denoiser, y, preset, seeds))[1], "full loop")
        else:
            s = int(os.environ.get("MIMICFAST_BENCH_EAGER_STEPS", "4"))
            kinds = window_mask(preset.steps, preset.window)
            per_step = {}
            for guided, window in ((False, (0.0, 0.0)), (True, None)):  # (0, 0) guides no k >= 1
                probe = preset.replace(steps=s, window=window)
                _synced(lambda p=probe: purify_batch(denoiser, y, p.replace(steps=2), seeds))  # warm-up
                per_step[guided] = _synced(lambda p=probe: purify_batch(denoiser, y, p, seeds))[1] / s
            total = sum(per_step[k] for k in kinds)
            result = (total, f"per step over {s} steps of each kind")
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        result = (None, "out of memory")
    _EAGER[key] = result
    return result


def _time_steps(loop, graphed, guided: bool, k: int, y, seeds, rounds: int = 3) -> tuple[float, int]:
    """(median seconds per step, steps timed) of replaying ~k consecutive steps of one kind (CUDA events)."""
    start, stop = graphed.kind_span(guided, k)
    times = []
    for r in range(rounds + 1):  # round 0 warms up
        loop.reset(y, seeds)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        graphed.run(start=start, stop=stop)
        end.record()
        end.synchronize()
        if r:
            times.append(begin.elapsed_time(end) / 1e3 / (stop - start))
    return statistics.median(times), stop - start


def _report(row: dict) -> None:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    print("\n[bench_purify] " + "  ".join(f"{k}={fmt(v)}" for k, v in row.items()))
    out = os.environ.get("MIMICFAST_BENCH_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("variant", _variants())
@pytest.mark.parametrize(("config", "batch"), GPU_CASES, ids=[f"{c}-b{b}" for c, b in GPU_CASES])
def test_purify_gpu(benchmark, matmul_peak: float, config: str, batch: int, variant: str) -> None:
    cfg, var = CONFIGS[config], VARIANTS[variant]
    denoiser = as_denoiser(_model(config)).to("cuda")
    preset = get_preset("paper").replace(steps=cfg["steps"])
    guided = sum(window_mask(preset.steps, preset.window))
    gen = torch.Generator(device="cuda").manual_seed(batch)
    y = torch.rand(batch, *cfg["shape"], generator=gen, device="cuda") * 2 - 1
    seeds = list(range(batch))

    eager_s, eager_method = _eager_seconds(config, batch, denoiser, preset, y, seeds)

    purifier = FastPurifier(
        denoiser, preset, autocast=var.autocast, channels_last=var.channels_last, compile=var.compile,
        graphs=True, chunk=var.chunk, input_only_vjp=var.input_only_vjp,
    )  # fmt: skip
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        (loop, graphed), setup_s = _synced(lambda: purifier.prepare(y, seeds))
    except torch.cuda.OutOfMemoryError:
        purifier.clear()
        torch.cuda.empty_cache()
        fits = purifier.batch_size(cfg["shape"], device="cuda")  # this purifier's policy, probed
        _report(dict(config=config, variant=variant, batch=batch, result="out of memory", auto_batch_size=fits))
        pytest.skip(f"out of memory at batch {batch}; auto_batch_size says {fits} fit")
    sampled = os.environ.get("MIMICFAST_BENCH_FAST_STEPS", "full")
    if sampled == "full":
        timings: list[float] = []

        def run():
            out, seconds = _synced(lambda: purifier(y, seeds))
            timings.append(seconds)
            return out

        rounds = 1 if cfg["steps"] * batch >= 1000 else 3
        out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
        seconds, fast_method = statistics.median(timings), f"full loop, median of {rounds}"
    else:
        per_step: dict[bool, tuple[float, int]] = {}

        def run_sampled():
            for kind in (False, True):
                per_step[kind] = _time_steps(loop, graphed, kind, int(sampled), y, seeds)
            return loop.x

        out = benchmark.pedantic(run_sampled, rounds=1, iterations=1, warmup_rounds=0)
        seconds = sum(per_step[kind][0] for kind in loop.kinds)
        fast_method = f"per step over {per_step[False][1]} unguided + {per_step[True][1]} guided steps, median of 3"
    peak_gib = torch.cuda.max_memory_allocated() / 2**30

    flops = json.loads((PARITY / "flops.json").read_text())[cfg["flops"]]
    floor_flops = preset.steps * flops["forward"] + guided * flops[cfg["vjp"]]  # per image
    s_per_image = seconds / batch
    row = dict(
        config=config, variant=variant, batch=batch, steps=preset.steps, guided_steps=guided,
        s_per_image=s_per_image, images_per_s=1 / s_per_image, setup_s=setup_s, peak_mem_gib=peak_gib,
        fast_method=fast_method,
        eager_s_per_image=None if eager_s is None else eager_s / batch, eager_method=eager_method,
        speedup_vs_eager=None if eager_s is None else eager_s / seconds,
        floor_s_per_image=floor_flops / matmul_peak, floor_fraction=floor_flops / matmul_peak / s_per_image,
        matmul_peak_tflops=matmul_peak / 1e12, finite_fraction=float(torch.isfinite(out).float().mean()),
        device=torch.cuda.get_device_name(), torch=torch.__version__, date=datetime.date.today().isoformat(),
    )  # fmt: skip
    if cfg["paper"]:
        row["x_paper_156s"] = PAPER_SECONDS_PER_IMAGE["window"] / s_per_image
        row["x_paper_268s"] = PAPER_SECONDS_PER_IMAGE["no_window"] / s_per_image
    benchmark.extra_info.update(row)
    _report(row)
    purifier.clear()


def _cpu_model() -> tuple[torch.nn.Module, str]:
    """The bundled Fashion-MNIST UNet if present, else the guided-diffusion parity fixture (random weights)."""
    from mimicfast.default import UNET_PATH, load_default_unet
    from mimicfast.models.loader import load_guided_diffusion

    if UNET_PATH.exists():
        return load_default_unet(), "bundled fmnist unet"
    weights = PARITY / "gd_unet_small_state_dict.pt"
    if not weights.exists():
        pytest.skip("neither the bundled model nor the parity fixtures are available")
    return load_guided_diffusion(weights, "gd-small-test"), "gd-small-test fixture"


CPU_VARIANTS = {"fast": {}, "fast-compile": {"compile": True}}


@pytest.mark.parametrize("variant", list(CPU_VARIANTS))
def test_purify_cpu_small(benchmark, variant: str) -> None:
    """Eager reference vs fast path (no graphs) on the CPU.

    ``fast``: the same arithmetic, so ~1x and bit-identical (asserted). ``fast-compile``: the network call
    under ``torch.compile`` (inductor's C++ code on the CPU; ~1.5 min of compilation, outside the timing), only
    with ``MIMICFAST_BENCH_CPU_COMPILE=1``; its rounding differs, so the row reports the largest difference.
    """
    if variant == "fast-compile" and os.environ.get("MIMICFAST_BENCH_CPU_COMPILE") != "1":
        pytest.skip("torch.compile on the CPU compiles for minutes; set MIMICFAST_BENCH_CPU_COMPILE=1")
    model, name = _cpu_model()
    denoiser = as_denoiser(model)
    preset = get_preset("paper").replace(steps=10)
    c, size = denoiser.channels, denoiser.image_size
    y = torch.rand(2, c, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seeds = [0, 1]
    purify_batch(denoiser, y, preset.replace(steps=2), seeds)  # first calls load kernels and allocate
    purifier = FastPurifier(denoiser, preset, graphs=False, **CPU_VARIANTS[variant])
    purifier(y, seeds)  # the same for the fast path, and compilation of both step kinds
    eager_times: list[float] = []
    fast_times: list[float] = []
    eager: list[torch.Tensor] = []

    def eager_round():  # pytest-benchmark's untimed setup: interleaving evens out the load of a shared machine
        out, seconds = _synced(lambda: purify_batch(denoiser, y, preset, seeds))
        eager.append(out)
        eager_times.append(seconds)

    def run():
        out, seconds = _synced(lambda: purifier(y, seeds))
        fast_times.append(seconds)
        return out

    rounds = int(os.environ.get("MIMICFAST_BENCH_CPU_ROUNDS", "3"))
    fast = benchmark.pedantic(run, setup=eager_round, rounds=rounds, iterations=1, warmup_rounds=0)
    if variant == "fast":
        assert torch.equal(fast, eager[-1])
    eager_s, fast_s = statistics.median(eager_times), statistics.median(fast_times)
    row = dict(
        config=name, variant=f"{variant}-cpu", batch=2, steps=preset.steps,
        s_per_image=fast_s / 2, images_per_s=2 / fast_s, eager_s_per_image=eager_s / 2,
        speedup_vs_eager=eager_s / fast_s, max_abs_diff_vs_eager=float((fast - eager[-1]).abs().max()),
        rounds=rounds, device="cpu", threads=torch.get_num_threads(),
        torch=torch.__version__, date=datetime.date.today().isoformat(),
    )  # fmt: skip
    benchmark.extra_info.update(row)
    _report(row)
