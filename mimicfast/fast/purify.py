"""Entry points of the fast path: :class:`FastPurifier` (reusable) and :func:`purify_batch_fast` (one shot).

Same contract as :func:`mimicfast.api.purify_batch`: Algorithm 1 on one batch in model space, sample i's
random numbers from its own generator seeded with ``seeds[i]``. With the plain policy (no autocast, NCHW,
not compiled) and ``graphs=False`` the result equals ``purify_batch``'s bit for bit; CUDA graphs replay the
same kernels with the same noise (see :mod:`mimicfast.fast.graphed`); autocast changes the network's
rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mimicfast.errors import InputError
from mimicfast.fast.graphed import GraphedLoop
from mimicfast.fast.loop import FastLoop
from mimicfast.fast.memory import auto_batch_size
from mimicfast.fast.precision import apply_policy, resolve_autocast
from mimicfast.presets import Preset
from mimicfast.sampling.denoisers import Denoiser
from mimicfast.seeding import expand_seeds
from mimicfast.validate import check_count


class FastPurifier:
    """The fast sampler for one denoiser, preset and policy; keeps captured graphs per batch shape.

    Capturing costs a few steps (warm-up plus capture) and the graphs' memory pool stays reserved while
    cached: reuse one ``FastPurifier`` across batches of the same shape, and :meth:`clear` it (or drop it)
    to free the memory.

    Args:
        denoiser: ``D(x, sigma)`` (:func:`mimicfast.sampling.as_denoiser` of a network).
        preset: the method's settings (:func:`mimicfast.purify_options.resolve_preset`).
        autocast: the network's compute dtype: ``None`` / ``"fp32"`` (the working dtype, exact),
            ``"bf16"`` or ``"fp16"`` (see :mod:`mimicfast.fast.precision`).
        channels_last: run the network on NHWC tensors.
        compile: ``torch.compile`` the network call (``True`` or a backend name).
        graphs: capture and replay CUDA graphs; ``None`` = on CUDA devices only.
        chunk: steps per captured graph (1 = one graph per step kind).
        max_cached: batch shapes whose state and graphs are kept.
        input_only_vjp: guided steps keep only what their input-VJP needs (:mod:`mimicfast.fast.input_vjp`; same
            result, half the memory of a bf16 ImageNet step). ``None`` = on CUDA unless ``compile``: its Python
            dispatch mode costs nothing in a replayed graph but ~15% of a small network's eager CPU step, and
            Dynamo and a dispatch mode are kept apart.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        preset: Preset,
        *,
        autocast: torch.dtype | str | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
        graphs: bool | None = None,
        chunk: int = 1,
        max_cached: int = 2,
        input_only_vjp: bool | None = None,
    ) -> None:
        chunk, max_cached = check_count(chunk, "chunk"), check_count(max_cached, "max_cached")
        self.preset = preset
        self.autocast = resolve_autocast(autocast)
        self.denoiser = apply_policy(denoiser, autocast=self.autocast, channels_last=channels_last, compile=compile)
        self.graphs = graphs
        self.chunk = chunk
        self.max_cached = max_cached
        self.compile = compile
        self.input_only_vjp = input_only_vjp
        self._cache: dict[tuple, tuple[FastLoop, GraphedLoop | None]] = {}
        self._batch_sizes: dict[tuple, int] = {}

    def _input_only_vjp(self, device: torch.device) -> bool:
        if self.input_only_vjp is None:
            return device.type == "cuda" and not self.compile
        return self.input_only_vjp

    def _use_graphs(self, device: torch.device) -> bool:
        if self.graphs is None:
            return device.type == "cuda"
        if self.graphs and device.type != "cuda":
            raise InputError(f"graphs=True needs a CUDA device, got {device}; use graphs=False or None")
        return self.graphs

    def _state(self, y: torch.Tensor, seeds: Sequence[int]) -> tuple[FastLoop, GraphedLoop | None]:
        key = (tuple(y.shape), y.dtype, y.device)
        if key in self._cache:
            loop, graphed = self._cache[key]
            loop.reset(y, seeds)
            return loop, graphed
        while len(self._cache) >= self.max_cached:
            del self._cache[next(iter(self._cache))]
        loop = FastLoop(
            self.denoiser, self.preset, y.shape, device=y.device, dtype=y.dtype,
            input_only_vjp=self._input_only_vjp(y.device),
        )  # fmt: skip
        loop.reset(y, seeds)
        graphed = None
        if self._use_graphs(y.device):
            try:
                graphed = GraphedLoop(loop, chunk=self.chunk)
            except torch.cuda.OutOfMemoryError:
                raise  # keep its type: callers catch it to pick a smaller batch
            except RuntimeError as exc:
                raise RuntimeError(
                    f"capturing the purification step in a CUDA graph failed: {exc}. The denoiser probably reads "
                    "a tensor value on the host (.item(), bool(t), data-dependent shapes) or runs an op that CUDA "
                    "graphs cannot capture; run it with graphs=False"
                ) from exc
            loop.reset(y, seeds)  # warm-up advanced x, idx and the generators
        self._cache[key] = (loop, graphed)
        return loop, graphed

    def batch_size(
        self, image_shape: Sequence[int], *, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> int:
        """Images per call that fit in the device memory free now (:func:`mimicfast.fast.auto_batch_size`).

        Measured once per image shape, device and dtype, then remembered: later calls would see the memory
        that this purifier's own captured graphs hold and pick a smaller batch, i.e. a new shape to capture.
        The probes run this purifier's denoiser (its precision policy and cast weights, not a second copy).
        """
        device = torch.device(device)
        key = (tuple(image_shape), device, dtype)
        if key not in self._batch_sizes:
            self._batch_sizes[key] = auto_batch_size(
                self.denoiser, self.preset, image_shape, device=device, dtype=dtype,
                input_only_vjp=self._input_only_vjp(device),
            )  # fmt: skip
        return self._batch_sizes[key]

    def prepare(self, y: torch.Tensor, seeds: Sequence[int]) -> tuple[FastLoop, GraphedLoop | None]:
        """Build (and on CUDA capture) the state for ``y``'s shape now, so that the next call only runs.

        Returns the loaded state and its captured graphs (None without graphs), e.g. to time parts of the loop.
        """
        return self._state(y, self._check(y, seeds))

    def __call__(self, y: torch.Tensor, seeds: Sequence[int], *, progress: bool = False) -> torch.Tensor:
        """Purify one batch: ``y`` [B, C, H, W] in [-1, 1] (fp32 or fp64) -> x_0 [B, C, H, W], a new tensor."""
        loop, graphed = self._state(y, self._check(y, seeds))
        out = graphed.run(progress) if graphed is not None else loop.run_eager(progress)
        return out.clone()

    def _check(self, y: torch.Tensor, seeds: Sequence[int]) -> list[int]:
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or not y.is_floating_point():
            raise InputError(f"y must be a floating [B, C, H, W] tensor, got {getattr(y, 'shape', type(y).__name__)}")
        if y.dtype not in (torch.float32, torch.float64):
            raise InputError(f"the sampler state must be float32 or float64, got {y.dtype}")
        if self.autocast is not None and y.dtype == torch.float64:
            raise InputError("autocast to a 16-bit dtype with a float64 state: use float32 data or autocast=None")
        return expand_seeds(list(seeds), y.shape[0])

    def clear(self) -> None:
        """Drop every cached state and graph (their memory returns to the allocator)."""
        self._cache.clear()


def purify_batch_fast(
    denoiser: Denoiser,
    y: torch.Tensor,
    preset: Preset,
    seeds: Sequence[int],
    *,
    autocast: torch.dtype | str | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
    graphs: bool | None = None,
    chunk: int = 1,
    input_only_vjp: bool | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Algorithm 1 on one batch, fast: :func:`mimicfast.api.purify_batch`'s contract, one-shot.

    Args:
        denoiser: ``D(x, sigma)``.
        y: [B, C, H, W] adversarial images in model space [-1, 1]; its dtype (fp32 / fp64) is the
            sampler state's and its device is where the work runs.
        preset: the method's settings.
        seeds: one seed per sample (sample i's noise depends on ``seeds[i]`` only).
        autocast, channels_last, compile, graphs, chunk, input_only_vjp: see :class:`FastPurifier`.
        progress: show a progress bar.

    Returns:
        x_0, [B, C, H, W] in ``y``'s dtype and on its device.
    """
    purifier = FastPurifier(
        denoiser, preset, autocast=autocast, channels_last=channels_last, compile=compile, graphs=graphs,
        chunk=chunk, input_only_vjp=input_only_vjp,
    )  # fmt: skip
    return purifier(y, seeds, progress=progress)
