"""Public API: :func:`purify` and the :class:`Purifier` module.

Images in user space are in [0, 1]; the diffusion model works in [-1, 1] (``2x - 1``). Purification
starts from pure noise ``x_T ~ N(0, I)`` and runs Algorithm 1 with ``y = x_adv`` as guidance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mimicfast.errors import InputError
from mimicfast.presets import Preset, get_preset
from mimicfast.sampling.ancestral import sample
from mimicfast.sampling.denoisers import Denoiser, as_denoiser
from mimicfast.sampling.guidance import MimicGuidance
from mimicfast.sampling.noise import PerSampleNoise, expand_seeds


def validate_images(x: object, denoiser: Denoiser | None = None) -> torch.Tensor:
    """Check a user batch: a float tensor [B, C, H, W], B > 0, finite, in [0, 1], sized for the model."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"expected images of shape [B, C, H, W] (rank 4), got rank {x.dim()} {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise InputError("empty batch: x has 0 images")
    if denoiser is not None:
        if denoiser.channels is not None and x.shape[1] != denoiser.channels:
            raise InputError(f"the model takes {denoiser.channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        size = denoiser.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise InputError(f"the model takes {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("images contain NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"image values must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return x


def _working_dtype(denoiser: Denoiser) -> torch.dtype:
    """float64 for float64 models (exactness checks), float32 otherwise (fp16 weights compute internally)."""
    params = list(denoiser.parameters())
    return torch.float64 if params and all(p.dtype == torch.float64 for p in params) else torch.float32


def _device_of(denoiser: Denoiser) -> torch.device:
    for p in denoiser.parameters():
        return p.device
    return torch.device("cpu")


def resolve_preset(preset: str | Preset, steps: int | None, overrides: dict) -> Preset:
    """The preset with ``steps`` and any other field overrides applied."""
    p = get_preset(preset)
    if steps is not None:
        overrides = {**overrides, "steps": steps}
    return p.replace(**overrides) if overrides else p


def purify_batch(
    denoiser: Denoiser,
    y: torch.Tensor,
    preset: Preset,
    seeds: Sequence[int],
    *,
    progress: bool = False,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Algorithm 1 on one batch in model space: ``y`` [B, C, H, W] in [-1, 1] -> x_0 [B, C, H, W].

    Every random number of sample i comes from its own stream seeded with ``seeds[i]``, so the result of
    an image does not depend on the rest of the batch.
    """
    sigmas = denoiser.sigmas(preset.steps, preset.spacing)
    noise = PerSampleNoise(seeds, y.shape[1:], device=y.device, dtype=y.dtype)
    x = noise() * float((1 + sigmas[0] ** 2).sqrt())  # x_T ~ N(0, I) in VP = x_T / sqrt(abar_T) in sigma space
    return sample(
        denoiser,
        x,
        sigmas,
        noise=noise,
        eta=preset.eta,
        guidance=MimicGuidance(y, preset, sigmas),
        learned_variance=preset.learned_variance,
        clip_denoised=preset.clip_denoised,
        callback=callback,
        progress=progress,
    )


def purify(
    x: torch.Tensor,
    model: nn.Module | Callable,
    *,
    preset: str | Preset = "paper",
    steps: int | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    fast: bool | None = None,
    autocast: str | None = None,
    **overrides,
) -> torch.Tensor:
    """Purify adversarial images with MimicDiffusion.

    Args:
        x: [B, C, H, W] float images in [0, 1] (the adversarial inputs x_adv).
        model: a network from :mod:`mimicfast.models` (wrapped with its schedule automatically), a
            :class:`mimicfast.sampling.Denoiser`, or any callable ``D(x, sigma)`` in sigma space.
        preset: ``"paper"``, ``"released"`` or a :class:`Preset`.
        steps: number of reverse steps T (default: the preset's).
        seed: an int (sample i gets ``seed + i``) or one seed per sample. Same seed, same output.
        batch_size: images per sampler call (default: all at once on the CPU, as many as fit in free memory
            on CUDA); never changes the result.
        device: where to run (default: the model's device).
        progress: show a progress bar over the reverse steps.
        fast: use the fast path (:mod:`mimicfast.fast`: static buffers, CUDA-graph replay on CUDA). Default:
            on for CUDA, off on the CPU. Without autocast it computes exactly what the eager path computes.
        autocast: ``"bf16"`` or ``"fp16"`` runs the network in that precision on the fast path (the sampler
            state, coefficients and residual stay fp32); None keeps the working precision.
        **overrides: any other :class:`Preset` field, e.g. ``scale=0.5`` or ``window=None``.

    Returns:
        purified images, [B, C, H, W] in [0, 1], on x's device and in x's dtype.
    """
    denoiser = as_denoiser(model)
    return _purify_images(
        x,
        denoiser,
        resolve_preset(preset, steps, overrides),
        seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
        fast=fast,
        autocast=autocast,
        fast_cache={},
    )


def _purify_images(
    x: torch.Tensor,
    denoiser: Denoiser,
    p: Preset,
    seed: int | Sequence[int],
    *,
    batch_size: int | None,
    device: torch.device | str | None,
    progress: bool,
    fast: bool | None,
    autocast: str | None,
    fast_cache: dict,
) -> torch.Tensor:
    """:func:`purify` after argument resolution; ``fast_cache`` keeps fast purifiers (and their captured
    CUDA graphs) across calls, keyed by device, dtype and autocast."""
    x = validate_images(x, denoiser)
    seeds = expand_seeds(seed, x.shape[0])
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    run_device = torch.device(device) if device is not None else _device_of(denoiser)
    denoiser = denoiser.to(run_device)
    dtype = _working_dtype(denoiser)
    use_fast = run_device.type == "cuda" if fast is None else fast
    if autocast is not None and not use_fast:
        raise InputError("autocast needs the fast path (fast=True, the default on CUDA)")
    if use_fast:
        from mimicfast.fast import FastPurifier

        key = (run_device, dtype, autocast)
        if key not in fast_cache:
            fast_cache[key] = FastPurifier(denoiser, p, autocast=autocast)
        run_batch = fast_cache[key]
        if batch_size is None and run_device.type == "cuda":
            batch_size = min(run_batch.batch_size(x.shape[1:], device=run_device, dtype=dtype), x.shape[0])
    else:

        def run_batch(y: torch.Tensor, chunk_seeds: Sequence[int], *, progress: bool) -> torch.Tensor:
            return purify_batch(denoiser, y, p, chunk_seeds, progress=progress)

    chunk = batch_size or x.shape[0]
    outputs = []
    for start in range(0, x.shape[0], chunk):
        y = x[start : start + chunk].detach().to(device=run_device, dtype=dtype) * 2 - 1
        out = run_batch(y, seeds[start : start + chunk], progress=progress)
        outputs.append(((out + 1) / 2).clamp(0, 1).to(device=x.device, dtype=x.dtype))
    return torch.cat(outputs)


class Purifier(nn.Module):
    """MimicDiffusion as an ``nn.Module``: ``nn.Sequential(Purifier(model), classifier)`` works.

    ``forward(x)`` takes and returns [B, C, H, W] images in [0, 1]. The output carries no gradient
    to ``x`` (purification is not differentiable end to end; attack it with BPDA, see
    :mod:`mimicfast.attacks`). Arguments are those of :func:`purify`.
    """

    def __init__(
        self,
        model: nn.Module | Callable,
        *,
        preset: str | Preset = "paper",
        steps: int | None = None,
        seed: int | Sequence[int] = 0,
        batch_size: int | None = None,
        progress: bool = False,
        fast: bool | None = None,
        autocast: str | None = None,
        **overrides,
    ) -> None:
        super().__init__()
        self.denoiser = as_denoiser(model)
        self.preset = resolve_preset(preset, steps, overrides)
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress
        self.fast = fast
        self.autocast = autocast
        self._fast_cache: dict = {}  # captured CUDA graphs are reused across forward calls

    def forward(self, x: torch.Tensor, seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Purify ``x`` [B, C, H, W] in [0, 1]; ``seed`` overrides the module's seed for this call (e.g. one EOT
        draw of an attack), reusing the captured CUDA graphs of earlier calls."""
        return _purify_images(
            x,
            self.denoiser,
            self.preset,
            self.seed if seed is None else seed,
            batch_size=self.batch_size,
            device=None,
            progress=self.progress,
            fast=self.fast,
            autocast=self.autocast,
            fast_cache=self._fast_cache,
        )

    def extra_repr(self) -> str:
        return f"preset={self.preset.name!r}, steps={self.preset.steps}, seed={self.seed!r}"
