"""The fast path (mimicfast.fast) against the eager sampler and the reference (docs/DESIGN.md §4).

CPU: the fast path's eager mode (the very step code that CUDA graphs capture) equals
``mimicfast.api.purify_batch`` bit for bit; the graph plan, the precision policy, batch sizing and the errors.
GPU (``@pytest.mark.gpu``, skipped without CUDA): graph replay draws exactly the eager noise and equals the
eager fast path; no host sync in a step; the docs/DESIGN.md §4 error criterion against Algorithm 1 in float64;
bf16 sanity; batch sizing from free memory; bf16 accuracy of the bundled model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mimicfast.api import purify_batch
from mimicfast.errors import InputError
from mimicfast.fast import (
    FastLoop,
    FastPurifier,
    Footprint,
    apply_policy,
    auto_batch_size,
    batch_from_budget,
    measure_footprint,
    purify_batch_fast,
    resolve_autocast,
    segments,
)
from mimicfast.models.loader import load_guided_diffusion
from mimicfast.presets import get_preset
from mimicfast.sampling import PerSampleNoise, as_denoiser
from mimicfast.schedules import window_mask
from tests.helpers import TinyEpsNet

CASES = {
    "paper": dict(preset="paper", scale=1e-3),
    "paper-eta0": dict(preset="paper", scale=1e-3, eta=0.0),
    "paper-nowindow-noclip": dict(preset="paper", scale=1e-4, window=None, clip_denoised=False),
    "paper-l2-long-only": dict(preset="paper", scale=1e-3, distance="l2", upsample=None),
    "released": dict(preset="released"),
    "released-vjp": dict(preset="released", jacobian="vjp"),
}


def _preset(case: str, steps: int = 20):
    spec = dict(CASES[case])
    return get_preset(spec.pop("preset")).replace(steps=steps, **spec)


def _y(batch: int, dtype=torch.float64, size: int = 8, channels: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=gen, dtype=dtype) * 2 - 1


@pytest.fixture(scope="module")
def gd_small(parity_dir):
    """The guided-diffusion parity UNet (random weights, learned sigma), float32, CPU."""
    return load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test")


# ---------------------------------------------------------------------------------------------- CPU


BITWISE = [(case, ls, torch.float64) for case in CASES for ls in (False, True)] + [
    ("paper", True, torch.float32),
    ("released", False, torch.float32),
]


@pytest.mark.parametrize(
    ("case", "learn_sigma", "dtype"),
    BITWISE,
    ids=[f"{c}-{'learned' if ls else 'fixed'}-var-{str(dt)[-7:]}" for c, ls, dt in BITWISE],
)
def test_fast_eager_equals_purify_batch_bitwise(case: str, learn_sigma: bool, dtype: torch.dtype) -> None:
    denoiser = as_denoiser(TinyEpsNet(learn_sigma=learn_sigma).to(dtype))
    preset, y, seeds = _preset(case, steps=10), _y(2, dtype), [11, 12]
    expected = purify_batch(denoiser, y, preset, seeds)
    for input_only_vjp in (False, True):
        got = purify_batch_fast(denoiser, y, preset, seeds, graphs=False, input_only_vjp=input_only_vjp)
        assert got.dtype == dtype and got.shape == y.shape
        assert torch.equal(got, expected), f"max |diff| {(got - expected).abs().max():.3e}"


def test_fast_eager_equals_purify_batch_gd_unet(gd_small) -> None:
    """The real guided-diffusion architecture (attention, learned variance, scale-shift norm), float32.

    3 paper steps: the window (0.2 T <= k <= 0.5 T) guides only k = 1, the last step, so this covers a VJP
    through the UNet and the step to sigma = 0, where the learned variance may overflow and the fast path
    must still add no noise.
    """
    preset = get_preset("paper").replace(steps=3, scale=1e-4)
    denoiser = as_denoiser(gd_small)
    y, seeds = _y(1, torch.float32, size=32), [3]
    expected = purify_batch(denoiser, y, preset, seeds)
    for input_only_vjp in (False, True):  # plain autograd, and frozen convolutions that keep no inputs
        got = purify_batch_fast(denoiser, y, preset, seeds, graphs=False, input_only_vjp=input_only_vjp)
        assert torch.isfinite(got).all()
        assert torch.equal(got, expected), f"max |diff| {(got - expected).abs().max():.3e}"


@pytest.mark.parametrize("case", ["paper", "released-vjp"])
def test_fast_eager_equals_algorithm1_float64(case: str) -> None:
    """Against the spec directly (docs/DESIGN.md §4: same seed, float64, ~1e-6), not only through purify_batch."""
    from mimicfast.reference.algorithm1 import mimic_diffusion_reference

    net = TinyEpsNet(learn_sigma=True).double()
    preset, y, seeds = _preset(case, steps=10), _y(2), [5, 6]
    ref = mimic_diffusion_reference(net, y, preset, PerSampleNoise(seeds, y.shape[1:], dtype=torch.float64),
                                    learned_variance=True)  # fmt: skip
    got = purify_batch_fast(as_denoiser(net), y, preset, seeds, graphs=False)
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()


def test_fast_path_is_batch_independent() -> None:
    denoiser = as_denoiser(TinyEpsNet(learn_sigma=True).double())
    preset, y = _preset("paper"), _y(3)
    batch = purify_batch_fast(denoiser, y, preset, [7, 8, 9], graphs=False)
    alone = purify_batch_fast(denoiser, y[1:2], preset, [8], graphs=False)
    assert torch.equal(batch[1:2], alone)


def test_purifier_reuse_resets_every_buffer() -> None:
    """A cached state purifies a second batch exactly like a fresh one, and earlier outputs stay intact."""
    denoiser = as_denoiser(TinyEpsNet().double())
    preset = _preset("paper")
    purifier = FastPurifier(denoiser, preset, graphs=False)
    first = purifier(_y(2, seed=1), [1, 2])
    first_copy = first.clone()
    second = purifier(_y(2, seed=5), [3, 4])
    assert torch.equal(second, purify_batch_fast(denoiser, _y(2, seed=5), preset, [3, 4], graphs=False))
    assert torch.equal(first, first_copy)
    assert not torch.equal(first, second)


def test_purifier_cache_is_bounded() -> None:
    purifier = FastPurifier(as_denoiser(TinyEpsNet().double()), _preset("released"), graphs=False, max_cached=2)
    for batch in (1, 2, 3):
        purifier(_y(batch), list(range(batch)))
    assert [key[0][0] for key in purifier._cache] == [2, 3]
    purifier.clear()
    assert not purifier._cache


def test_loop_index_and_last_step_mask() -> None:
    denoiser = as_denoiser(TinyEpsNet().double())
    loop = FastLoop(denoiser, _preset("paper"), (2, 3, 8, 8), device="cpu", dtype=torch.float64)
    loop.reset(_y(2), [0, 1])
    assert int(loop.idx) == 0
    loop.run_eager()
    assert int(loop.idx) == loop.steps == 20
    assert loop.coef.noise_on[:-1].all() and not loop.coef.noise_on[-1]
    assert loop.kinds == [10 <= i <= 16 for i in range(20)]  # paper window: 0.2 T <= T - i <= 0.5 T


class _NoHostSync(TorchDispatchMode):
    """Fails on every op that moves a tensor value to the host (``.item()``, ``bool(t)``, ``float(t)``) or
    whose output shape depends on tensor values: on CUDA each is a device sync and breaks graph capture."""

    BANNED = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique", "aten::equal")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.BANNED:
            raise AssertionError(f"host sync inside the loop: {func._schema.name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["paper", "released-vjp", "paper-nowindow-noclip"])
def test_loop_steps_never_read_tensor_values_on_the_host(case: str) -> None:
    """The CPU stand-in for "no host sync in the loop" (the GPU test uses torch.cuda.set_sync_debug_mode)."""
    loop = FastLoop(as_denoiser(TinyEpsNet(learn_sigma=True)), _preset(case, 10), (2, 3, 8, 8), device="cpu")
    loop.reset(_y(2, torch.float32), [0, 1])
    with _NoHostSync():
        loop.run_eager()
    with pytest.raises(AssertionError, match="host sync"), _NoHostSync():
        loop.x.sum().item()  # the detector detects


@pytest.mark.parametrize("policy", [{}, dict(autocast="bf16", channels_last=True)], ids=["fp32", "bf16-nhwc"])
def test_gd_unet_steps_never_read_tensor_values_on_the_host(gd_small, policy) -> None:
    denoiser = apply_policy(as_denoiser(gd_small), **policy)
    loop = FastLoop(denoiser, get_preset("paper").replace(steps=3), (1, 3, 32, 32), device="cpu")
    loop.reset(_y(1, torch.float32, size=32), [0])
    with _NoHostSync():
        loop.step(False)
        loop.step(True)


@pytest.mark.parametrize("precond", ["EDMPrecond", "VPPrecond"])
def test_edm_steps_never_read_tensor_values_on_the_host(precond: str) -> None:
    """The CIFAR-10 bench's network family (SongUNet with attention) under the graph-capture constraint."""
    from tests.models._edm_util import tiny_edm

    denoiser = as_denoiser(tiny_edm(precond_class=precond).eval())
    loop = FastLoop(denoiser, get_preset("paper").replace(steps=3), (2, 3, 8, 8), device="cpu")
    loop.reset(_y(2, torch.float32), [0, 1])
    with _NoHostSync():
        loop.step(False)
        loop.step(True)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_segments_cover_the_loop(chunk: int) -> None:
    kinds = window_mask(100, (0.2, 0.5)) + [True, False, True]  # runs of 50, 31, 19, then single steps
    plan = segments(kinds, chunk)
    assert [k for kind, n in plan for k in [kind] * n] == kinds
    assert all(1 <= n <= chunk for _, n in plan)
    if chunk == 1:
        assert set(plan) == {(True, 1), (False, 1)}
    with pytest.raises(ValueError):
        segments(kinds, 0)


def test_autocast_bf16_on_cpu_is_close_and_leaves_the_model_alone() -> None:
    net = TinyEpsNet(learn_sigma=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    denoiser = as_denoiser(net)
    preset, y, seeds = _preset("paper"), _y(2, torch.float32), [1, 2]
    ref = purify_batch_fast(denoiser, y, preset, seeds, graphs=False)
    bf16 = purify_batch_fast(denoiser, y, preset, seeds, graphs=False, autocast="bf16")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    rel = (bf16 - ref).norm() / ref.norm()
    assert 0 < rel < 5e-2, f"relative L2 difference {rel:.3e}"  # bf16 has 8 mantissa bits: ~4e-3 per op
    for k, v in net.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k])


def test_precision_wrapper_casts_matrices_only() -> None:
    wrapped = apply_policy(as_denoiser(TinyEpsNet()), autocast=torch.bfloat16, channels_last=True)
    overrides = wrapped._overrides
    assert set(overrides) == {"inner.model.conv1.weight", "inner.model.conv2.weight"}  # rank-1 biases stay fp32
    assert all(
        t.dtype == torch.bfloat16 and t.is_contiguous(memory_format=torch.channels_last) for t in overrides.values()
    )
    plain = as_denoiser(TinyEpsNet())
    assert apply_policy(plain) is plain  # the plain policy adds nothing


def test_precision_wrapper_keeps_declared_scales() -> None:
    net = TinyEpsNet()
    net.guidance_scales = {"paper": 0.02}
    wrapped = apply_policy(as_denoiser(net), autocast=torch.bfloat16)
    assert dict(wrapped.guidance_scales) == {"paper": 0.02}  # a preset named by name resolves the same through it


def test_channels_last_matches_nchw() -> None:
    denoiser = as_denoiser(TinyEpsNet(learn_sigma=True).double())
    preset, y, seeds = _preset("paper"), _y(2), [1, 2]
    nchw = purify_batch_fast(denoiser, y, preset, seeds, graphs=False)
    nhwc = purify_batch_fast(denoiser, y, preset, seeds, graphs=False, channels_last=True)
    assert torch.allclose(nhwc, nchw, rtol=0, atol=1e-12 * nchw.abs().max())


def test_compile_plumbing_with_the_eager_backend() -> None:
    """``torch.compile`` traces the wrapped network call (Dynamo only; code generation is measured on a GPU)."""
    torch._dynamo.reset()
    denoiser = as_denoiser(TinyEpsNet().double())
    preset, y, seeds = _preset("released", steps=10), _y(2), [1, 2]
    expected = purify_batch(denoiser, y, preset, seeds)
    got = purify_batch_fast(denoiser, y, preset, seeds, graphs=False, compile="eager")
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 * expected.abs().max())


def test_bad_arguments_raise_input_error() -> None:
    denoiser = as_denoiser(TinyEpsNet())
    preset, y = _preset("released"), _y(2, torch.float32)
    with pytest.raises(InputError, match="CUDA"):
        purify_batch_fast(denoiser, y, preset, [0, 1], graphs=True)
    with pytest.raises(InputError, match="seeds"):
        purify_batch_fast(denoiser, y, preset, [0], graphs=False)
    with pytest.raises(InputError, match="float64"):
        purify_batch_fast(as_denoiser(TinyEpsNet().double()), y.double(), preset, [0, 1], autocast="bf16")
    with pytest.raises(InputError, match="float32 or float64"):
        purify_batch_fast(denoiser, y.half(), preset, [0, 1], graphs=False)
    with pytest.raises(InputError, match="autocast"):
        resolve_autocast("int8")
    with pytest.raises(InputError, match="denoiser has tensors on cpu"):
        FastLoop(denoiser, preset, (1, 3, 8, 8), device="meta")
    with pytest.raises(InputError, match="chunk"):
        FastPurifier(denoiser, preset, chunk=0)
    assert resolve_autocast("fp32") is None and resolve_autocast(torch.float16) is torch.float16


def test_batch_from_budget_arithmetic() -> None:
    fp = Footprint(fixed_bytes=1000, per_image_bytes=300)
    assert fp.at(4) == 2200
    assert batch_from_budget(2200, fp, safety=1.0) == 4
    assert batch_from_budget(2199, fp, safety=1.0) == 3
    assert batch_from_budget(2200, fp, safety=0.5) == 1  # never below 1
    assert batch_from_budget(10**9, fp, max_batch=16) == 16
    with pytest.raises(InputError):
        batch_from_budget(100, fp, safety=0)


def test_cpu_footprint_grows_with_batch_and_sizes_the_batch() -> None:
    denoiser = as_denoiser(TinyEpsNet())
    preset = _preset("paper")
    fp = measure_footprint(denoiser, preset, (3, 8, 8), device="cpu")
    # TinyEpsNet saves at least its 8-channel hidden activation (twice: conv input and tanh output) per image.
    assert fp.per_image_bytes >= 2 * 8 * 8 * 8 * 4
    budget = math.ceil(fp.at(5) / 0.85)
    assert auto_batch_size(denoiser, preset, (3, 8, 8), device="cpu", budget_bytes=budget) == 5
    assert auto_batch_size(denoiser, preset, (3, 8, 8), device="cpu", budget_bytes=budget, n_images=2) == 2
    assert auto_batch_size(denoiser, preset, (3, 8, 8), device="cpu") >= 1  # the machine's MemAvailable


def test_purifier_measures_its_batch_size_once(monkeypatch) -> None:
    """Measured once per shape: later calls would see the purifier's own graphs' memory and pick a new shape."""
    import mimicfast.fast.purify as fast_purify

    calls = []

    def counting(denoiser, preset, image_shape, **kwargs):
        calls.append(denoiser)
        return 5

    monkeypatch.setattr(fast_purify, "auto_batch_size", counting)
    purifier = FastPurifier(as_denoiser(TinyEpsNet()), _preset("paper"), autocast="bf16")
    assert purifier.batch_size((3, 8, 8), device="cpu") == 5
    assert purifier.batch_size((3, 8, 8), device="cpu") == 5
    assert calls == [purifier.denoiser]  # probed once, with the purifier's own precision wrapper
    purifier.batch_size((3, 16, 16), device="cpu")
    assert len(calls) == 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_only_vjp_changes_nothing_under_bf16(gd_small, channels_last: bool) -> None:
    """The bf16 policy's loop, with and without input-only VJPs (convolutions and the fp32 GroupNorm): bitwise."""
    preset = get_preset("paper").replace(steps=4, scale=1e-2, window=None)  # every step guided
    denoiser, y, seeds = as_denoiser(gd_small), _y(2, torch.float32, size=32), [5, 6]
    runs = [
        purify_batch_fast(denoiser, y, preset, seeds, graphs=False, autocast="bf16", channels_last=channels_last,
                          input_only_vjp=flag)
        for flag in (False, True)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])


def test_input_only_vjp_default_follows_the_device() -> None:
    """On by default where graphs replay it for free (CUDA), off on the CPU and under torch.compile."""
    denoiser, preset, y = as_denoiser(TinyEpsNet()), _preset("paper"), _y(2, torch.float32)
    loop, _ = FastPurifier(denoiser, preset).prepare(y, [0, 1])
    assert loop.input_only_vjp is False
    loop, _ = FastPurifier(denoiser, preset, input_only_vjp=True).prepare(y, [0, 1])
    assert loop.input_only_vjp is True
    cuda = torch.device("cuda")
    assert FastPurifier(denoiser, preset)._input_only_vjp(cuda)
    assert not FastPurifier(denoiser, preset, compile="eager")._input_only_vjp(cuda)


def test_graphed_run_replays_the_pieces_of_a_range() -> None:
    """Replay bookkeeping of GraphedLoop.run (capture needs CUDA; stand-in graphs advance the index)."""
    from mimicfast.fast.graphed import GraphedLoop

    loop = FastLoop(as_denoiser(TinyEpsNet()), _preset("paper"), (1, 3, 8, 8), device="cpu")
    replayed = []

    class StandIn:
        def __init__(self, piece):
            self.piece = piece

        def replay(self):
            replayed.append(self.piece)
            loop.idx.add_(self.piece[1])

    graphed = GraphedLoop.__new__(GraphedLoop)
    graphed.loop, graphed.plan = loop, segments(loop.kinds, 4)
    graphed.graphs = {piece: StandIn(piece) for piece in graphed.plan}
    bounds = graphed.boundaries()
    assert bounds[0] == 0 and bounds[-1] == loop.steps and len(bounds) == len(graphed.plan) + 1
    graphed.run()
    assert replayed == graphed.plan and int(loop.idx) == loop.steps
    replayed.clear()
    graphed.run(start=bounds[2], stop=bounds[4])
    assert replayed == graphed.plan[2:4] and int(loop.idx) == bounds[4]
    for guided in (False, True):  # chunk 4: the first run of each kind, cut at a piece boundary
        start, stop = graphed.kind_span(guided, 10)
        assert start in bounds and stop in bounds and 0 < stop - start <= 10
        assert loop.kinds[start:stop] == [guided] * (stop - start) and loop.kinds.index(guided) == start
    assert graphed.kind_span(True, 1) == (loop.kinds.index(True), loop.kinds.index(True) + 4)  # one whole piece
    not_a_boundary = next(i for i in range(loop.steps) if i not in bounds)
    for start, stop in ((not_a_boundary, None), (0, not_a_boundary), (bounds[3], bounds[1])):
        with pytest.raises(InputError, match="boundaries"):
            graphed.run(start=start, stop=stop)


def test_importing_fast_does_not_initialise_cuda() -> None:
    assert not torch.cuda.is_initialized()


# ---------------------------------------------------------------------------------------------- GPU


def _cuda_gd_small(parity_dir):
    """The parity UNet as a denoiser on the GPU (the adapter's schedule buffer moves with it)."""
    net = load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test", device="cuda")
    return as_denoiser(net).to("cuda")


@pytest.mark.gpu
def test_graph_replay_draws_the_eager_noise_exactly() -> None:
    """Registered per-sample generators: replays advance them exactly like eager draws (Philox counters)."""
    from mimicfast.fast.graphed import register_generators

    seeds, shape = [5, 6, 7], (3, 16, 16)
    noise = PerSampleNoise(seeds, shape, device="cuda")
    out = torch.empty(len(seeds), *shape, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out.copy_(noise())
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    register_generators(graph, noise.generators)
    with torch.cuda.graph(graph):
        out.copy_(noise())
    for gen, seed in zip(noise.generators, seeds, strict=True):
        gen.manual_seed(seed)
    eager = PerSampleNoise(seeds, shape, device="cuda")
    first = noise()  # an eager draw between replays keeps both in step
    assert torch.equal(first, eager())
    for _ in range(3):
        graph.replay()
        assert torch.equal(out, eager())


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("name", ["paper", "released"])
def test_graph_replay_equals_eager_fast_path_fp32(parity_dir, name: str, chunk: int) -> None:
    preset = get_preset(name).replace(steps=20, **({"scale": 1e-4} if name == "paper" else {}))
    denoiser = _cuda_gd_small(parity_dir)
    y, seeds = _y(3, torch.float32, size=32).cuda(), [1, 2, 3]
    eager = purify_batch_fast(denoiser, y, preset, seeds, graphs=False)
    purifier = FastPurifier(denoiser, preset, graphs=True, chunk=chunk)
    graphed = purifier(y, seeds)
    again = purifier(y, seeds)  # replaying cached graphs with re-seeded generators
    # Same kernels, same noise: differences only from run-to-run nondeterminism of cuDNN's data-gradient
    # kernels (atomics), far below what a wrong step index or wrong noise would give (order 1).
    scale = eager.abs().max()
    assert (graphed - eager).abs().max() <= 1e-4 * scale
    assert (graphed - again).abs().max() <= 1e-4 * scale


@pytest.mark.gpu
def test_no_host_sync_inside_the_loop(parity_dir) -> None:
    denoiser = _cuda_gd_small(parity_dir)
    loop = FastLoop(denoiser, get_preset("paper").replace(steps=10, scale=1e-4), (2, 3, 32, 32), device="cuda")
    loop.reset(_y(2, torch.float32, size=32).cuda(), [0, 1])
    loop.step(True)  # first calls compile/load kernels
    loop.reset(_y(2, torch.float32, size=32).cuda(), [0, 1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loop.run_eager()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["paper", "released"])
def test_graphed_fast_path_error_vs_reference_is_at_most_twice_eager(parity_dir, name: str) -> None:
    """docs/DESIGN.md §4: the fast path's error against float64 Algorithm 1 is at most ~2x plain PyTorch's (fp32)."""
    from mimicfast.reference.algorithm1 import mimic_diffusion_reference

    preset = get_preset(name).replace(steps=20, **({"scale": 1e-4} if name == "paper" else {}))
    denoiser = _cuda_gd_small(parity_dir)
    y, seeds = _y(2, torch.float32, size=32).cuda(), [1, 2]
    cuda_noise = PerSampleNoise(seeds, y.shape[1:], device="cuda")  # the same fp32 Philox draws for all three
    net64 = load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test").double()
    ref = mimic_diffusion_reference(
        net64, y.double().cpu(), preset, lambda: cuda_noise().double().cpu(), learned_variance=True
    )
    eager = purify_batch(denoiser, y, preset, seeds).double().cpu()
    fast = purify_batch_fast(denoiser, y, preset, seeds, graphs=True).double().cpu()
    err_eager = (eager - ref).abs().max()
    err_fast = (fast - ref).abs().max()
    assert err_fast <= 2 * err_eager + 1e-6 * ref.abs().max(), f"fast {err_fast:.3e} vs eager {err_eager:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_low_precision_graphed_path_is_sane(parity_dir, autocast: str) -> None:
    preset = get_preset("paper").replace(steps=20, scale=1e-4)
    denoiser = _cuda_gd_small(parity_dir)
    y, seeds = _y(4, torch.float32, size=32).cuda(), [1, 2, 3, 4]
    fp32 = purify_batch_fast(denoiser, y, preset, seeds)
    low = purify_batch_fast(denoiser, y, preset, seeds, autocast=autocast, channels_last=True)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    rel = float((low - fp32).norm() / fp32.norm())
    assert rel < 0.1, f"{autocast}: relative L2 difference to fp32 {rel:.3e}"


@pytest.mark.gpu
def test_auto_batch_size_fits_free_memory(parity_dir) -> None:
    from mimicfast.fast.memory import free_memory

    denoiser = _cuda_gd_small(parity_dir)
    preset = get_preset("paper")
    fp = measure_footprint(denoiser, preset, (3, 32, 32), device="cuda")
    assert fp.per_image_bytes > 3 * 32 * 32 * 4
    batch = auto_batch_size(denoiser, preset, (3, 32, 32), device="cuda", autocast="bf16")
    assert batch >= 1 and fp.at(1) <= free_memory("cuda")


@pytest.mark.gpu
@pytest.mark.slow
def test_bf16_accuracy_of_the_bundled_model_within_noise_of_fp32() -> None:
    """Standard and robust accuracy of the bundled Fashion-MNIST pair: bf16 autocast vs fp32, N = 256.

    Robust = PGD-Linf (eps 0.1, 20 steps) against the classifier alone, then purified. Same images, seeds
    and adversarial examples for both precisions; the accuracies may differ by at most
    3 * sqrt(2 p (1 - p) / N) + 1/N (three standard errors of the difference of two independent
    binomial estimates at the fp32 accuracy p; with shared seeds the real spread is smaller).
    """
    from mimicfast.attacks import pgd
    from mimicfast.default import UNET_PATH, load_default, load_test_slice

    if not UNET_PATH.exists():
        pytest.skip(f"bundled model not found at {UNET_PATH}")
    n = 256
    model, classifier = load_default("cuda")
    x, labels = load_test_slice(n)
    x, labels = x.cuda(), labels.cuda()
    x_adv = pgd(classifier, x, labels, eps=0.1, steps=20)
    denoiser = as_denoiser(model).to("cuda")
    preset = get_preset("paper").replace(steps=100)
    seeds = list(range(n))

    def accuracy(images: torch.Tensor, autocast) -> float:
        purified = purify_batch_fast(denoiser, images * 2 - 1, preset, seeds, autocast=autocast)
        with torch.no_grad():
            pred = classifier(((purified + 1) / 2).clamp(0, 1)).argmax(1)
        return float((pred == labels).float().mean())

    for images in (x, x_adv):
        p32, p16 = accuracy(images, None), accuracy(images, "bf16")
        bound = 3 * math.sqrt(2 * p32 * (1 - p32) / n) + 1 / n
        assert abs(p16 - p32) <= bound, f"fp32 {p32:.3f} vs bf16 {p16:.3f} (bound {bound:.3f})"


@pytest.mark.gpu
def test_purify_on_cuda_takes_the_graphed_path_and_purifier_reuses_it(parity_dir) -> None:
    """The public API on CUDA: fast path by default, graphs captured once per shape, same result as eager."""
    from mimicfast.api import Purifier, purify

    net = load_guided_diffusion(parity_dir / "gd_unet_small_state_dict.pt", "gd-small-test", device="cuda")
    x = (_y(3, torch.float32, size=32).cuda() + 1) / 2
    settings = dict(preset="paper", steps=10, scale=1e-4, seed=0)
    purifier = Purifier(net, **settings)
    first = purifier(x)
    (fast,) = purifier._fast_cache.values()
    ((_, graphed),) = fast._cache.values()
    assert graphed is not None
    second = purifier(x)
    assert next(iter(fast._cache.values()))[1] is graphed  # replayed, not captured again
    eager = purify(x, net, fast=False, **settings)
    assert first.device.type == "cuda"
    # Images in [0, 1]; the differences come only from cuDNN's nondeterministic data-gradient kernels (above).
    assert (first - second).abs().max() <= 1e-4 and (first - eager).abs().max() <= 1e-4
