"""The reverse loop of the fast path as one in-place, graph-capturable step on static buffers.

:class:`FastLoop` holds everything a step touches in fixed device buffers: the sample ``x``, the guidance
target ``y``, the step index ``idx`` (a device tensor), the per-step coefficient tables and the per-sample
noise generators. :meth:`FastLoop.step` runs THE reverse step, :func:`mimicfast.sampling.step.reverse_step`,
on those buffers: the step reads the index on the device (``index_select``, never a Python int, never
``.item()``); the loop writes the result into ``x`` in place and increments ``idx``. So the same step code
serves every step of a kind: run eagerly it is the eager fast path; captured once per kind (guided /
unguided) in a CUDA graph it is replayed for every step (:mod:`mimicfast.fast.graphed`). The eager sampler
(:func:`mimicfast.sampling.ancestral.sample`, hence :func:`mimicfast.api.purify_batch`) runs the same
function, so in the working dtype the fast path's eager mode equals it bit for bit.

Noise: sample i draws from its own ``torch.Generator`` seeded with ``seeds[i]``
(:class:`mimicfast.sampling.noise.PerSampleNoise`): the start noise, then one draw per step. On CUDA the
generators are registered with each captured graph, so a replay advances them exactly as the eager draws
do and the graphed path draws the eager path's noise (Philox counters, see ``graphed.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mimicfast.errors import InputError
from mimicfast.fast.input_vjp import input_only_vjp as _input_only_vjp
from mimicfast.presets import Preset
from mimicfast.sampling.denoisers import Denoiser
from mimicfast.sampling.guidance import MimicGuidance
from mimicfast.sampling.noise import PerSampleNoise
from mimicfast.sampling.step import StepCoefficients, reverse_step, uses_learned_variance
from mimicfast.schedules import start_scale


class FastLoop:
    """Static state and the in-place step of Algorithm 1 for one batch shape.

    Args:
        denoiser: ``D(x, sigma)`` (possibly a :class:`mimicfast.fast.precision.PrecisionDenoiser`).
        preset: the method's settings.
        shape: ``[B, C, H, W]`` of the batch.
        device, dtype: where the state lives and its (working) dtype, fp32 or fp64.
        input_only_vjp: run guided forwards under :class:`mimicfast.fast.input_vjp.input_only_vjp` (frozen
            convolutions and GroupNorms keep only what the input gradient needs; same result, less memory).

    Attributes:
        x: [B, C, H, W] the current sample in sigma space (after :meth:`reset`: ``x_T / sqrt(abar_T)``).
        y: [B, C, H, W] the adversarial images in model space [-1, 1].
        idx: int64 [1], the index of the next step (0 = the noisiest); ``steps`` when done.
        kinds: ``kinds[i]`` is True iff step i is guided (static: from the preset's window).
        noise: the per-sample generators (their objects never change, :meth:`reset` re-seeds them).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        preset: Preset,
        shape: Sequence[int],
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        input_only_vjp: bool = True,
    ) -> None:
        self.denoiser = denoiser
        self.input_only_vjp = input_only_vjp
        self._vjp_context = _input_only_vjp if input_only_vjp else contextlib.nullcontext
        self.preset = preset
        self.shape = tuple(shape)
        self.device = torch.device(device)
        for t in (*denoiser.parameters(), *denoiser.buffers()):
            if t.device.type != self.device.type:
                raise InputError(
                    f"the denoiser has tensors on {t.device} but the batch is on {self.device}: "
                    f"move it with denoiser.to({str(self.device)!r})"
                )
        self.dtype = dtype
        sigmas = denoiser.sigmas(preset.steps, preset.spacing)
        self.steps = len(sigmas) - 1
        self.start_scale = start_scale(sigmas[0])
        self.learned = uses_learned_variance(denoiser, preset.learned_variance, preset.eta)
        self.x = torch.zeros(self.shape, device=self.device, dtype=dtype)
        self.y = torch.zeros(self.shape, device=self.device, dtype=dtype)
        self.idx = torch.zeros(1, device=self.device, dtype=torch.int64)
        self.coef = StepCoefficients.build(sigmas, preset.eta, device=self.device, dtype=dtype)
        self.guidance = MimicGuidance(self.y, preset, sigmas)  # reads self.y, refilled by reset()
        self.kinds = list(self.guidance.active)
        self.noise = PerSampleNoise(range(self.shape[0]), self.shape[1:], device=self.device, dtype=dtype)

    def reset(self, y: torch.Tensor, seeds: Sequence[int]) -> None:
        """Load a batch: copy ``y`` in, re-seed every sample's generator, draw ``x_T``, set ``idx = 0``."""
        self.y.copy_(y)
        for gen, seed in zip(self.noise.generators, seeds, strict=True):
            gen.manual_seed(int(seed))
        self.x.copy_(self.noise() * self.start_scale)
        self.idx.zero_()

    def step(self, guided: bool) -> None:
        """One reverse step at ``idx``, in place on ``x``; then ``idx += 1``. CUDA-graph capturable.

        :func:`mimicfast.sampling.step.reverse_step` on the static buffers. ``guided`` must equal
        ``kinds[idx]``; it selects code, so it is a Python bool known before the loop starts (the window is
        static), never read from a tensor.
        """
        x, _ = reverse_step(
            self.denoiser, self.x, self.y, self.idx, self.noise(), self.coef,
            guidance=self.guidance if guided else None, learned_variance=self.learned,
            clip_denoised=self.preset.clip_denoised, vjp_context=self._vjp_context,
        )  # fmt: skip
        with torch.no_grad():
            self.x.copy_(x)
            self.idx.add_(1)

    def run_eager(self, progress: bool = False) -> torch.Tensor:
        """All steps from ``idx = 0``, eagerly (the fast path without graphs). Returns ``x`` (the buffer)."""
        for guided in tqdm(self.kinds, disable=not progress, desc="purify", leave=False):
            self.step(guided)
        return self.x


def segments(kinds: Sequence[bool], chunk: int = 1) -> list[tuple[bool, int]]:
    """Split the step sequence into ``(guided, length)`` pieces of at most ``chunk`` same-kind steps.

    One captured graph per distinct piece replays the whole loop: with ``chunk = 1`` two graphs (guided,
    unguided) serve all steps; a larger ``chunk`` trades a few more captured graphs for fewer replays.
    The pieces, concatenated, are exactly ``kinds``.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out: list[tuple[bool, int]] = []
    for kind in kinds:
        if out and out[-1][0] == kind and out[-1][1] < chunk:
            out[-1] = (kind, out[-1][1] + 1)
        else:
            out.append((kind, 1))
    return out
