"""End-to-end purification benches: the fast path against baselines measured in the same run, per image.

Every row compares like with like: the same network, images, seeds (so the same noise), T and window, and the
same precision on both sides of a speed-up (fp32 fast against fp32 eager, bf16 fast against bf16 eager; the
eager bf16 baseline is the eager sampler on the network under the same autocast policy). bf16 against fp32 is a
separate ratio, with its accuracy beside it (``bench_autocast_accuracy.py``).

**GPU rows** (skipped without CUDA), random weights (every parameter is redrawn, so no layer multiplies zeros,
which can run faster than real data):

* guided-diffusion ImageNet-256 uncond (552M parameters), paper preset, T = 1000, batch 1, 8, 32, each with the
  paper window (301 guided steps) and without it (``window=None``: 1000 guided steps), so the paper's 156 s
  (window) and 268 s (no window) per image on an RTX 4090 are each compared with the same setting;
* EDM DDPM++ CIFAR-10 (EDMPrecond + SongUNet, 56M), paper preset, T = 100 (31 guided steps), batch 1, 256.

Each GPU row: seconds per image and images/s of the fast path (steady state: capture is timed apart as
``setup_s``), peak device memory, the eager baseline in the same precision and its speed-up, the ratio to the
paper's figure for the same window (``gd256``), and the fraction of the FLOP floor ``T * forward + guided *
input-VJP`` FLOPs per image (``tests/fixtures/parity/flops.json``) at the dense-matmul rate of the row's
precision measured on the device in the same session.

The eager baseline at T = 1000 takes minutes per image, so by default it is timed per step: ``s`` steps with
every step unguided and ``s`` with every step guided (``MIMICFAST_BENCH_EAGER_STEPS``, default 4), and the
loop's time is ``unguided * t_unguided + guided * t_guided`` (``eager_method`` says which);
``MIMICFAST_BENCH_FULL_EAGER=1`` runs the whole eager loop instead. The fast path runs the whole loop by
default; ``MIMICFAST_BENCH_FAST_STEPS=k`` replays the captured graphs over ``k`` consecutive steps of each kind
of the real loop (median of 3) and combines them the same way (``fast_method`` says so).

**CPU rows** (run anywhere; ``test_purify_cpu``): the bundled Fashion-MNIST UNet on bundled test images, paper
and released presets, T = 20, batch 8, 1 thread advised (``OMP_NUM_THREADS=1``). Timed on the process's CPU time
(:func:`benches.machine.cpu_seconds`: other jobs on a shared CPU stretch wall time, not the CPU time a run takes)
in interleaved rounds (the order rotates each round), each ratio the median over rounds of the ratio within a
round:

* ``literal``: :func:`mimicfast.reference.algorithm1.mimic_diffusion_reference`, Algorithm 1 written literally
  (autograd through the loss as the paper writes it, F.interpolate for H), with the same network and noise;
* ``eager``: :func:`mimicfast.api.purify_batch`, the package's CPU default; ``fast``: :class:`FastPurifier`
  without graphs (the same arithmetic, asserted bit-identical to ``eager``);
* ``eager-bf16`` / ``fast-bf16``: the same two under bf16 autocast;
* paper only: ``literal``, ``eager`` and ``fast`` again without the window, for the window's saving at equal T.

A CPU row reports ratios and the fraction of the floor (FLOPs per image from ``torch.utils.flop_counter`` on one
forward and one input-VJP of the network, times the network evaluations of the preset, over a matmul peak of the
row's precision measured on the same clock in every round beside the runs; the median over rounds), never
absolute times; the CPU is named.

Run: ``pytest benches/bench_purify.py -s``. Environment: ``MIMICFAST_BENCH_VARIANTS`` (GPU: comma list of bf16,
bf16-nhwc, fp16, fp32, bf16-chunk8, bf16-compile, bf16-plainvjp; default bf16), ``MIMICFAST_BENCH_OUT`` (append
each row as JSON to this file), ``MIMICFAST_BENCH_CPU_STEPS`` / ``_CPU_BATCH`` / ``_CPU_ROUNDS`` (20 / 8 / 5),
``MIMICFAST_BENCH_CPU_COMPILE=1`` (also the fast path with the network under ``torch.compile``; minutes of
compilation).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from benches.machine import cpu_name, cpu_seconds, matmul_peak, matmul_rate, network_flops
from benches.rows import report
from mimicfast.api import purify_batch
from mimicfast.fast import FastPurifier
from mimicfast.fast.precision import apply_policy
from mimicfast.models.random_init import randomize_weights
from mimicfast.presets import Preset, get_preset
from mimicfast.reference.algorithm1 import mimic_diffusion_reference
from mimicfast.sampling import PerSampleNoise, as_denoiser
from mimicfast.schedules import window_mask
from tests.conftest import PARITY

PAPER_SECONDS_PER_IMAGE = {"window": 156.0, "no-window": 268.0}  # RTX 4090, ImageNet 256, T = 1000, paper
WINDOWS = {"window": get_preset("paper").window, "no-window": None}
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
PEAK_DTYPE = {None: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Variant:
    """A fast-path policy to time."""

    autocast: str | None
    channels_last: bool = False
    chunk: int = 1
    compile: bool = False
    input_only_vjp: bool | None = None

    @property
    def precision(self) -> str:
        return self.autocast or "fp32"


VARIANTS = {
    "bf16": Variant("bf16"),
    "bf16-nhwc": Variant("bf16", channels_last=True),
    "fp16": Variant("fp16"),
    "fp32": Variant(None),
    "bf16-chunk8": Variant("bf16", chunk=8),
    "bf16-compile": Variant("bf16", compile=True),
    "bf16-plainvjp": Variant("bf16", input_only_vjp=False),
}
GPU_CASES = [(c, b, w) for c, b in (("gd256", 1), ("gd256", 8), ("gd256", 32)) for w in WINDOWS] + [
    ("edm-cifar10", 1, "window"),
    ("edm-cifar10", 256, "window"),
]


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
_EAGER_STEPS: dict[tuple[str, int, str], dict[bool, float] | None] = {}


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


def _eager_seconds(config: str, batch: int, variant: Variant, denoiser, preset: Preset, y, seeds):
    """(seconds, method) of the eager sampler for the whole loop of one batch, in the variant's precision (the
    network under the same autocast, weights pre-cast, NCHW, not compiled); (None, "out of memory") if it does
    not fit. Per-step times are kept per (config, batch, precision) and serve both windows."""
    full = os.environ.get("MIMICFAST_BENCH_FULL_EAGER") == "1"
    s = int(os.environ.get("MIMICFAST_BENCH_EAGER_STEPS", "4"))
    key = (config, batch, variant.precision)
    if full or key not in _EAGER_STEPS:
        eager = apply_policy(denoiser, autocast=variant.autocast)
        try:
            if full:
                _synced(lambda: purify_batch(eager, y, preset.replace(steps=2), seeds))  # warm-up
                return _synced(lambda: purify_batch(eager, y, preset, seeds))[1], "full loop"
            per_step = {}
            for guided, window in ((False, (0.0, 0.0)), (True, None)):  # (0, 0) guides no k >= 1
                probe = preset.replace(steps=s, window=window)
                _synced(lambda p=probe: purify_batch(eager, y, p.replace(steps=2), seeds))  # warm-up
                per_step[guided] = _synced(lambda p=probe: purify_batch(eager, y, p, seeds))[1] / s
            _EAGER_STEPS[key] = per_step
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if full:
                return None, "out of memory"
            _EAGER_STEPS[key] = None
    per_step = _EAGER_STEPS[key]
    if per_step is None:
        return None, "out of memory"
    return sum(per_step[k] for k in window_mask(preset.steps, preset.window)), f"per step over {s} steps of each kind"


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
    report("bench_purify", row)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("variant", _variants())
@pytest.mark.parametrize(("config", "batch", "window"), GPU_CASES, ids=[f"{c}-b{b}-{w}" for c, b, w in GPU_CASES])
def test_purify_gpu(benchmark, config: str, batch: int, window: str, variant: str) -> None:
    cfg, var = CONFIGS[config], VARIANTS[variant]
    denoiser = as_denoiser(_model(config)).to("cuda")
    preset = get_preset("paper").replace(steps=cfg["steps"], window=WINDOWS[window])
    guided = sum(window_mask(preset.steps, preset.window))
    gen = torch.Generator(device="cuda").manual_seed(batch)
    y = torch.rand(batch, *cfg["shape"], generator=gen, device="cuda") * 2 - 1
    seeds = list(range(batch))

    eager_s, eager_method = _eager_seconds(config, batch, var, denoiser, preset, y, seeds)

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
        _report(dict(config=config, window=window, variant=variant, batch=batch, result="out of memory",
                     auto_batch_size=fits))  # fmt: skip
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
            for kind in sorted(set(loop.kinds)):  # no unguided step without the window
                per_step[kind] = _time_steps(loop, graphed, kind, int(sampled), y, seeds)
            return loop.x

        out = benchmark.pedantic(run_sampled, rounds=1, iterations=1, warmup_rounds=0)
        seconds = sum(per_step[kind][0] for kind in loop.kinds)
        spans = " + ".join(f"{n} {'guided' if kind else 'unguided'}" for kind, (_, n) in sorted(per_step.items()))
        fast_method = f"per step over {spans} steps, median of 3"
    peak_gib = torch.cuda.max_memory_allocated() / 2**30

    flops = json.loads((PARITY / "flops.json").read_text())[cfg["flops"]]
    floor_flops = preset.steps * flops["forward"] + guided * flops[cfg["vjp"]]  # per image
    peak = matmul_peak(PEAK_DTYPE[var.autocast], "cuda")
    s_per_image = seconds / batch
    row = dict(
        config=config, window=window, variant=variant, precision=var.precision, batch=batch, steps=preset.steps,
        guided_steps=guided, s_per_image=s_per_image, images_per_s=1 / s_per_image, setup_s=setup_s,
        peak_mem_gib=peak_gib, fast_method=fast_method,
        eager_precision=var.precision, eager_s_per_image=None if eager_s is None else eager_s / batch,
        eager_method=eager_method, speedup_vs_eager=None if eager_s is None else eager_s / seconds,
        floor_s_per_image=floor_flops / peak, floor_fraction=floor_flops / peak / s_per_image,
        matmul_peak_tflops=peak / 1e12, finite_fraction=float(torch.isfinite(out).float().mean()),
        device=torch.cuda.get_device_name(), torch=torch.__version__, date=datetime.date.today().isoformat(),
    )  # fmt: skip
    if cfg["paper"]:
        row["paper_s_per_image"] = PAPER_SECONDS_PER_IMAGE[window]
        row["x_paper"] = PAPER_SECONDS_PER_IMAGE[window] / s_per_image
    benchmark.extra_info.update(row)
    _report(row)
    purifier.clear()


def _cpu_setting(name: str, default: int) -> int:
    return int(os.environ.get(f"MIMICFAST_BENCH_CPU_{name}", str(default)))


def _cpu_runners(model, denoiser, preset: Preset, y, seeds) -> dict[str, Callable[[], torch.Tensor]]:
    """The implementations a CPU round times, by name (see the module docstring)."""

    def literal(p: Preset) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            noise = PerSampleNoise(seeds, y.shape[1:], dtype=y.dtype)  # the package's draws, in the same order
            return mimic_diffusion_reference(model, y, p, noise, learned_variance=denoiser.learned_variance)

        return run

    bf16 = apply_policy(denoiser, autocast="bf16")
    fast, fast_bf16 = FastPurifier(denoiser, preset, graphs=False), FastPurifier(denoiser, preset, graphs=False,
                                                                                autocast="bf16")  # fmt: skip
    runners = {
        "literal": literal(preset),
        "eager": lambda: purify_batch(denoiser, y, preset, seeds),
        "fast": lambda: fast(y, seeds),
        "eager-bf16": lambda: purify_batch(bf16, y, preset, seeds),
        "fast-bf16": lambda: fast_bf16(y, seeds),
    }
    if preset.name == "paper":
        bare = preset.replace(window=None)
        fast_bare = FastPurifier(denoiser, bare, graphs=False)
        runners["literal-no-window"] = literal(bare)
        runners["eager-no-window"] = lambda: purify_batch(denoiser, y, bare, seeds)
        runners["fast-no-window"] = lambda: fast_bare(y, seeds)
    if os.environ.get("MIMICFAST_BENCH_CPU_COMPILE") == "1":
        compiled = FastPurifier(denoiser, preset, graphs=False, compile=True)
        runners["fast-compile"] = lambda: compiled(y, seeds)
    return runners


def _median_ratio(times: dict[str, list[float]], slow: str, fast: str) -> tuple[float, float, float]:
    """(median, min, max) over rounds of ``times[slow] / times[fast]`` within each round."""
    ratios = [a / b for a, b in zip(times[slow], times[fast], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


@pytest.mark.parametrize("preset_name", ["paper", "released"])
def test_purify_cpu(benchmark, preset_name: str) -> None:
    """The CPU rows: package vs literal Algorithm 1, fast vs eager, bf16 vs fp32, window vs none, floor fraction."""
    from mimicfast.default import load_default_unet, load_test_slice

    steps, batch, rounds = _cpu_setting("STEPS", 20), _cpu_setting("BATCH", 8), _cpu_setting("ROUNDS", 5)
    model = load_default_unet()
    denoiser = as_denoiser(model)
    preset = get_preset(preset_name).replace(steps=steps)
    y = load_test_slice(batch)[0] * 2 - 1  # bundled test images in model space
    seeds = list(range(batch))
    runners = _cpu_runners(model, denoiser, preset, y, seeds)
    outputs = {name: run() for name, run in runners.items()}  # warm-up (and compilation), outside the timing
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    order = list(runners)

    def one_round() -> None:
        # The ceiling is measured in every round, beside the runs it divides: on a shared CPU the rate a core
        # gives drifts with the other jobs, and a ceiling from another moment can put a run above its floor.
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peaks[precision].append(matmul_rate(dtype, repeats=3, clock=cpu_seconds))
        for name in order:
            start = cpu_seconds()
            outputs[name] = runners[name]()
            times[name].append(cpu_seconds() - start)
        order.append(order.pop(0))  # rotate, so no implementation always runs first or after the same one

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    assert torch.equal(outputs["fast"], outputs["eager"]), "the fast path without graphs is the eager arithmetic"

    forward, vjp = network_flops(lambda x: denoiser(x, torch.ones(1)), y[:1])
    common = dict(model="bundled fmnist unet", steps=steps, batch=batch, rounds=rounds, device=cpu_name(),
                  torch=torch.__version__, date=datetime.date.today().isoformat())  # fmt: skip
    rows = []

    def add(p: Preset, precision: str, timed: str, ratios: dict[str, tuple[str, str]], **extra) -> None:
        """One row for preset ``p``: ``timed``'s floor fraction, and each ratio ``slow / fast`` by name."""
        guided = sum(window_mask(p.steps, p.window))
        vjps = guided if p.jacobian == "vjp" else 0  # constant_eps holds eps constant: no network VJP
        flops = p.steps * forward + vjps * vjp  # per image
        row = dict(preset=preset_name, window="window" if p.window else "none", precision=precision, timed=timed,
                   guided_steps=guided, vjp_steps=vjps, gflop_per_image=flops / 1e9,
                   matmul_peak_gflops=statistics.median(peaks[precision]) / 1e9,
                   floor_fraction=statistics.median(
                       flops * batch / peak / t for peak, t in zip(peaks[precision], times[timed], strict=True)
                   ))  # fmt: skip
        for name, (slow, fast) in ratios.items():
            med, lo, hi = _median_ratio(times, slow, fast)
            row[name], row[f"{name}_range"] = med, f"{lo:.3f}-{hi:.3f}"
        rows.append({**row, **extra, **common})

    def max_diff(a: str, b: str) -> float:
        return float((outputs[a] - outputs[b]).abs().max())

    add(preset, "fp32", "fast",
        {"fast_vs_eager": ("eager", "fast"), "eager_vs_literal": ("literal", "eager"),
         "fast_vs_literal": ("literal", "fast")},
        max_abs_diff_eager_vs_literal=max_diff("eager", "literal"))  # fmt: skip
    add(preset, "bf16", "fast-bf16",
        {"fast_vs_eager": ("eager-bf16", "fast-bf16"), "bf16_vs_fp32": ("fast", "fast-bf16")},
        max_abs_diff_vs_fp32=max_diff("fast-bf16", "fast"))  # fmt: skip
    if "fast-no-window" in runners:
        add(preset.replace(window=None), "fp32", "fast-no-window",
            {"fast_vs_eager": ("eager-no-window", "fast-no-window"),
             "eager_vs_literal": ("literal-no-window", "eager-no-window"),
             "fast_vs_literal": ("literal-no-window", "fast-no-window"),
             "no_window_vs_window": ("fast-no-window", "fast")},
            paper_no_window_vs_window=PAPER_SECONDS_PER_IMAGE["no-window"] / PAPER_SECONDS_PER_IMAGE["window"],
        )  # fmt: skip
    if "fast-compile" in runners:
        add(preset, "fp32", "fast-compile", {"compiled_vs_eager": ("eager", "fast-compile")},
            max_abs_diff_vs_eager=max_diff("fast-compile", "eager"))  # fmt: skip
    for row in rows:
        _report(row)
    benchmark.extra_info.update({"rows": rows})
