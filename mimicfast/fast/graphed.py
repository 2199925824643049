"""CUDA-graph replay of the reverse loop (docs/DESIGN.md §3: no host sync, coefficients on device).

A :class:`mimicfast.fast.loop.FastLoop` step reads its index from a device tensor and writes its result into
static buffers, so one captured graph per *piece* (``(guided, length)``: ``length`` consecutive steps of one
kind, see :func:`mimicfast.fast.loop.segments`) replays every such piece of the loop. With ``chunk = 1``
two graphs serve the whole loop (the guided one holds the network forward, the input-VJP through it, the
fused residual, the ancestral update and the noise); larger chunks capture several steps per graph and cut
the number of replays. All graphs share one memory pool: every piece ends by copying its result into the
static ``x`` (allocated outside the pool), so no pool memory is live between pieces and the graphs can be
replayed in any order.

Per-sample noise. Each sample owns a CUDA ``torch.Generator`` (Philox). Before capture, each generator is
registered with the graph (``CUDAGraph.register_generator_state``, torch >= 2.3; newer torch registers lazily
and keeps the call as a no-op). In a captured RNG kernel the Philox seed and base offset are read from device
memory that each replay refills from the generator's current host-side state, and the replay then advances
the generator by the graph's total offset increment. So a replay draws the numbers that the same calls would
draw eagerly from the same generator state: the graphed path reproduces the eager path's noise exactly, and
sample i's noise depends only on ``seeds[i]``. (CPU generators are Mersenne Twister, CUDA ones Philox: the
same seed gives different noise on the CPU and on the GPU, as for :func:`mimicfast.api.purify_batch`.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mimicfast.errors import InputError
from mimicfast.fast.loop import FastLoop, segments


def register_generators(graph: torch.cuda.CUDAGraph, generators: Sequence[torch.Generator]) -> None:
    """Register non-default CUDA generators with ``graph`` before its capture (no-op where torch does it lazily)."""
    register = getattr(graph, "register_generator_state", None)
    if register is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated no-op on torch versions that register lazily
        for gen in generators:
            register(gen)


class GraphedLoop:
    """The loop of a :class:`FastLoop` as replays of captured CUDA graphs.

    Capture happens in the constructor: a warm-up of ``warmup`` eager steps of each kind on a side stream
    (cuDNN / cuBLAS handles, Triton compilation, autotuning and the allocator must settle before capture),
    then one capture per distinct piece. Warm-up leaves ``loop.x``, ``loop.idx`` and the generators
    advanced: call ``loop.reset(y, seeds)`` before :meth:`run` (as :class:`mimicfast.fast.FastPurifier`
    does).

    Args:
        loop: the state and step to capture; must live on a CUDA device.
        chunk: steps per captured piece (1 = one graph per step kind).
        warmup: eager warm-up steps per kind before capture.
    """

    def __init__(self, loop: FastLoop, *, chunk: int = 1, warmup: int = 2) -> None:
        if loop.device.type != "cuda":
            raise InputError(f"CUDA graphs need a CUDA device, got {loop.device} (use the eager fast path)")
        self.loop = loop
        self.plan = segments(loop.kinds, chunk)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[bool, int], torch.cuda.CUDAGraph] = {}
        self._warm_up(warmup)
        for piece in dict.fromkeys(self.plan):  # distinct pieces, in first-use order
            self.graphs[piece] = self._capture(*piece)

    def _warm_up(self, warmup: int) -> None:
        loop = self.loop
        stream = torch.cuda.Stream(loop.device)
        stream.wait_stream(torch.cuda.current_stream(loop.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                for kind in dict.fromkeys(loop.kinds):
                    loop.idx.zero_()  # any valid step index; the values do not matter here
                    loop.step(kind)
        torch.cuda.current_stream(loop.device).wait_stream(stream)
        # The warm-up's blocks stay cached under the side stream, and the allocator never frees cached blocks
        # while a capture is under way: return them now, or capture needs twice a step's peak memory.
        torch.cuda.synchronize(loop.device)
        torch.cuda.empty_cache()

    def _capture(self, guided: bool, length: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        register_generators(graph, self.loop.noise.generators)
        with torch.cuda.graph(graph, pool=self.pool):
            for _ in range(length):
                self.loop.step(guided)
        return graph

    def boundaries(self) -> list[int]:
        """Step indices where a captured piece starts, and ``steps`` at the end (where :meth:`run` may start/stop)."""
        out = [0]
        for _, length in self.plan:
            out.append(out[-1] + length)
        return out

    def kind_span(self, guided: bool, steps: int) -> tuple[int, int]:
        """``(start, stop)``: the first piece-aligned run of consecutive steps of one kind, at most ``steps`` long
        (but at least one piece), e.g. to time that kind with :meth:`run`."""
        kinds, bounds = self.loop.kinds, self.boundaries()
        for i, start in enumerate(bounds[:-1]):
            if kinds[start] != guided:
                continue
            stop = bounds[i + 1]
            for bound in bounds[i + 2 :]:
                if bound - start > steps or not all(kind == guided for kind in kinds[stop:bound]):
                    break
                stop = bound
            return start, stop
        raise InputError(f"the loop has no {'guided' if guided else 'unguided'} step")

    def run(self, progress: bool = False, *, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Replay steps ``[start, stop)`` of the loop (default: all of it); returns ``loop.x`` (the buffer, not a copy).

        ``start`` and ``stop`` must be piece boundaries (:meth:`boundaries`; every step index with ``chunk=1``).
        A sub-range continues from whatever ``loop.x`` and the generators hold: it serves timing a part of the
        loop and resuming, not purifying from scratch (that is ``loop.reset`` then ``run()``).
        """
        stop = self.loop.steps if stop is None else stop
        bounds = self.boundaries()
        if start not in bounds or stop not in bounds or start > stop:
            raise InputError(f"start={start}, stop={stop} must be piece boundaries with start <= stop: {bounds[:8]}...")
        self.loop.idx.fill_(start)  # a write before the loop, never a host read inside it
        first, last = bounds.index(start), bounds.index(stop)
        bar = tqdm(total=stop - start, disable=not progress, desc="purify", leave=False)
        for piece in self.plan[first:last]:
            self.graphs[piece].replay()
            bar.update(piece[1])
        bar.close()
        return self.loop.x
