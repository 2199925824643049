"""Public API: :func:`purify` and the :class:`Purifier` module.

Images in user space are in [0, 1]; the diffusion model works in [-1, 1] (``2x - 1``). Purification
starts from pure noise ``x_T ~ N(0, I)`` and runs Algorithm 1 with ``y = x_adv`` as guidance.

Randomness: image i of a call draws all its random numbers (x_T, then one draw per reverse step) from its own
generator seeded with ``seeds[i]``. ``seed=None`` draws fresh seeds for every call from the operating system's
entropy (a deployed stochastic defense; what an EOT attack must face), never from torch's global generator, so
``torch.manual_seed`` neither replays the defense nor is shifted by it; an integer ``seed`` gives image i the
seed ``seed + i`` (its position in the batch), so the output is reproducible -- and the defense is deterministic
with a public key: an attacker who knows the seed can attack the very noise the defense will draw.

Gradients (:mod:`mimicfast.gradients`): ``grad="none"`` (no gradient), ``"bpda"`` (identity backward) or
``"full"`` (through every reverse step, ``sign`` smoothed in the backward pass only). The forward output is
bitwise the same in every mode for the same seeds.

Settings are checked once into a frozen :class:`mimicfast.purify_options.PurifyOptions`; :func:`purify` and
:class:`Purifier` accept its fields as keywords (or a built ``options`` object).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mimicfast.errors import InputError, NumericalError
from mimicfast.gradients import Trajectory, bpda, check_requires_grad, full_gradient, reverse_sweep
from mimicfast.presets import Preset
from mimicfast.purify_options import PurifyOptions, Seed, resolve_device, resolve_preset
from mimicfast.sampling.ancestral import sample
from mimicfast.sampling.denoisers import Denoiser, as_denoiser
from mimicfast.sampling.guidance import MimicGuidance
from mimicfast.sampling.noise import PerSampleNoise
from mimicfast.schedules import start_scale
from mimicfast.validate import check_images

__all__ = ["PurifyOptions", "Purifier", "purify", "purify_batch", "resolve_device", "resolve_preset", "to_user_space"]


def _working_dtype(denoiser: Denoiser) -> torch.dtype:
    """float64 for float64 models (exactness checks), float32 otherwise (fp16 weights compute internally)."""
    params = list(denoiser.parameters())
    return torch.float64 if params and all(p.dtype == torch.float64 for p in params) else torch.float32


def _device_of(denoiser: Denoiser) -> torch.device:
    for p in denoiser.parameters():
        return p.device
    return torch.device("cpu")


def _on_device(denoiser: Denoiser, device: torch.device) -> Denoiser:
    """The denoiser with its tensors on ``device``, never moving the caller's model: a copy whose parameters
    and buffers are moved copies (the weights are copied once, to ``device``), or the denoiser itself when
    everything already is there."""
    tensors = [*denoiser.parameters(), *denoiser.buffers()]
    if any(t.is_meta for t in tensors):
        raise InputError("the model has weights on the meta device (no values); load its weights first")
    if all(t.device == device for t in tensors):
        return denoiser
    # deepcopy takes a tensor from the memo instead of copying it: each parameter and buffer is copied straight
    # to ``device`` and nothing else of the caller's model is shared with or changed by the copy.
    memo: dict[int, object] = {}
    for prm in denoiser.parameters():
        memo[id(prm)] = nn.Parameter(prm.detach().to(device), requires_grad=prm.requires_grad)
    for buf in denoiser.buffers():
        memo[id(buf)] = buf.to(device)
    try:
        return copy.deepcopy(denoiser, memo)
    except (TypeError, RuntimeError, copy.Error) as exc:
        raise InputError(
            f"cannot copy the model to {device} ({exc}); move it yourself (model.to({str(device)!r})) and "
            "leave device=None"
        ) from None


def purify_batch(
    denoiser: Denoiser,
    y: torch.Tensor,
    preset: Preset,
    seeds: Sequence[int],
    *,
    progress: bool = False,
    callback: Callable | None = None,
    trajectory: Trajectory | None = None,
) -> torch.Tensor:
    """Algorithm 1 on one batch in model space: ``y`` [B, C, H, W] in [-1, 1] -> x_0 [B, C, H, W].

    Every random number of sample i comes from its own stream seeded with ``seeds[i]``, so the result of
    an image does not depend on the rest of the batch. ``trajectory`` (``grad="full"``) receives each step's
    input and noise; recording changes nothing in the result.
    """
    sigmas = denoiser.sigmas(preset.steps, preset.spacing)
    noise = PerSampleNoise(seeds, y.shape[1:], device=y.device, dtype=y.dtype)
    if trajectory is not None:
        noise = trajectory.record_noise(noise)
        user_callback = callback

        def callback(i: int, x_next: torch.Tensor, x0_hat: torch.Tensor) -> None:
            trajectory.record_step(i, x_next, x0_hat)
            if user_callback is not None:
                user_callback(i, x_next, x0_hat)

    x = noise() * start_scale(sigmas[0])
    if trajectory is not None:
        trajectory.xs.append(x)
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
    x: torch.Tensor, model: nn.Module | Callable, options: PurifyOptions | None = None, **settings: Any
) -> torch.Tensor:
    """Purify adversarial images with MimicDiffusion.

    Args:
        x: [B, C, H, W] float images in [0, 1] (the adversarial inputs x_adv), dense, not on the meta device.
        model: a network from :mod:`mimicfast.models` (wrapped with its schedule automatically), a
            :class:`mimicfast.sampling.Denoiser`, or any callable ``D(x, sigma)`` in sigma space.
        options: settings built by :meth:`PurifyOptions.build`; or pass them as keywords (``settings``):
            ``preset`` (``"paper"``, ``"released"`` or a :class:`Preset`), ``steps`` (T), ``seed`` (default 0:
            image i gets seed i; None: fresh private seeds every call), ``grad`` (``"none"``, ``"bpda"``,
            ``"full"``), ``tau``, ``batch_size``, ``device``, ``progress``, ``fast``, ``autocast`` and any
            :class:`Preset` field (e.g. ``scale=0.5``, ``window=None``); each is documented in
            :meth:`PurifyOptions.build`.

    Returns:
        purified images, [B, C, H, W] in [0, 1] (unclamped with ``clamp_output=False``), on x's device and in x's
        dtype.

    Raises:
        InputError: a bad argument or image batch (named in the message).
        NumericalError: the purified images are not finite (e.g. the denoiser returned NaN).
    """
    options = _options(options, settings)
    denoiser = as_denoiser(model)
    if options.device is not None:
        denoiser = _on_device(denoiser, options.device)
    return _purify_images(x, denoiser, options.resolve_preset(denoiser), options, None, fast_cache={})


def _options(options: PurifyOptions | None, settings: dict[str, Any]) -> PurifyOptions:
    if options is None:
        return PurifyOptions.build(**settings)
    if not isinstance(options, PurifyOptions):
        raise InputError(f"options must be a PurifyOptions (or pass settings as keywords), got {type(options).__name__}")
    if settings:
        raise InputError(f"pass settings either in options or as keywords, not both (got {', '.join(settings)})")
    return options


def _purify_images(
    x: torch.Tensor, denoiser: Denoiser, p: Preset, options: PurifyOptions, seed: Seed, *, fast_cache: dict
) -> torch.Tensor:
    """:func:`purify` after argument resolution, on the denoiser's device, with the resolved preset ``p``;
    ``seed`` (None: the options') overrides the options' seed for this call; ``fast_cache`` keeps fast purifiers
    (and their captured CUDA graphs) across calls, keyed by device, dtype and autocast."""
    grad, tau, progress, autocast = options.grad, options.tau, options.progress, options.autocast
    batch_size = options.batch_size
    x = check_images(x, channels=denoiser.channels, size=denoiser.image_size)
    check_requires_grad(x, grad)
    if any(t.is_meta for t in (*denoiser.parameters(), *denoiser.buffers())):
        raise InputError("the model has weights on the meta device (no values); load its weights first")
    seeds = options.seeds(x.shape[0], seed)
    run_device = _device_of(denoiser)
    dtype = _working_dtype(denoiser)
    needs_grad = grad != "none" and x.requires_grad and torch.is_grad_enabled()
    fast = run_device.type == "cuda" if options.fast is None else options.fast
    use_fast = fast and not (needs_grad and grad == "full")
    if autocast is not None and not use_fast:
        raise InputError("autocast needs the fast path (fast=True, the default on CUDA; not with grad='full')")
    if use_fast:
        from mimicfast.fast import FastPurifier

        key = (run_device, dtype, autocast)
        if key not in fast_cache:
            fast_cache[key] = FastPurifier(denoiser, p, autocast=autocast)
        run_batch = fast_cache[key]
        if batch_size is None and run_device.type == "cuda":
            batch_size = min(run_batch.batch_size(x.shape[1:], device=run_device, dtype=dtype), x.shape[0])
    else:

        def run_batch(
            y: torch.Tensor, chunk_seeds: Sequence[int], *, progress: bool, trajectory: Trajectory | None = None
        ) -> torch.Tensor:
            return purify_batch(denoiser, y, p, chunk_seeds, progress=progress, trajectory=trajectory)

    chunk = batch_size or x.shape[0]
    starts = range(0, x.shape[0], chunk)

    def model_space(images: torch.Tensor, start: int) -> torch.Tensor:
        return images[start : start + chunk].detach().to(device=run_device, dtype=dtype) * 2 - 1

    def to_images(out: torch.Tensor) -> torch.Tensor:
        images = to_user_space(out, p).to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(images).all()):
            raise NumericalError(
                "the purified images contain NaN or Inf: the denoiser returned non-finite values (check the "
                "model's weights and the preset's numbers)"
            )
        return images

    def forward(images: torch.Tensor) -> torch.Tensor:
        outs = [run_batch(model_space(images, s), seeds[s : s + chunk], progress=progress) for s in starts]
        return torch.cat([to_images(o) for o in outs])

    if not needs_grad:
        return forward(x)
    if grad == "bpda":
        return bpda(forward, x)

    def forward_recording(images: torch.Tensor) -> tuple[torch.Tensor, list]:
        """grad="full": the eager forward, keeping each chunk's trajectory (step inputs and noise)."""
        outs, states = [], []
        for s in starts:
            y, traj = model_space(images, s), Trajectory()
            out = run_batch(y, seeds[s : s + chunk], progress=progress, trajectory=traj)
            outs.append(to_images(out))
            states.append((y, traj, out))
        return torch.cat(outs), states

    def backward(states: list, grad_images: torch.Tensor) -> torch.Tensor:
        """grad="full": the output's clamp (exact derivative), the reverse sweep, then ``y = 2 x - 1``."""
        grads = []
        for s, (y, traj, out) in zip(starts, states, strict=True):
            g = grad_images[s : s + chunk].to(device=out.device, dtype=dtype)
            with torch.enable_grad():
                out_req = out.detach().requires_grad_(True)
                (g_out,) = torch.autograd.grad(to_user_space(out_req, p), out_req, g)
            g_y = reverse_sweep(denoiser, p, y, traj, g_out, tau=tau, progress=progress)
            grads.append((2 * g_y).to(device=x.device, dtype=x.dtype))
        return torch.cat(grads)

    return full_gradient(forward_recording, backward, x)


def to_user_space(out: torch.Tensor, preset: Preset) -> torch.Tensor:
    """Model space [-1, 1] to images: ``(out + 1) / 2``, clamped to [0, 1] unless ``preset.clamp_output`` is False."""
    images = (out + 1) / 2
    return images.clamp(0, 1) if preset.clamp_output else images


class Purifier(nn.Module):
    """MimicDiffusion as an ``nn.Module``: ``nn.Sequential(Purifier(model), classifier)`` works.

    ``forward(x)`` takes and returns [B, C, H, W] images in [0, 1]. With ``grad="bpda"`` or ``grad="full"``
    the output carries a gradient to ``x`` (:mod:`mimicfast.gradients`), so attack libraries (AutoAttack, ART,
    :mod:`mimicfast.attacks`) can attack ``nn.Sequential(Purifier(model, grad="bpda", seed=None), classifier)``
    directly; ``seed=None`` draws fresh defense randomness on every call (what EOT averages over). With
    ``grad="none"`` an input that requires grad is refused at once. Arguments are those of :func:`purify`;
    the CUDA-graphed fast path serves ``grad="none"`` and ``"bpda"``, while ``grad="full"`` runs the eager
    path whenever a gradient is needed. ``preset``, ``seed`` and ``grad`` are readable attributes (the preset
    resolved for the model, T included).
    """

    def __init__(self, model: nn.Module | Callable, options: PurifyOptions | None = None, **settings: Any) -> None:
        super().__init__()
        self.options = _options(options, settings)
        denoiser = as_denoiser(model)
        self.denoiser = denoiser if self.options.device is None else _on_device(denoiser, self.options.device)
        self.preset = self.options.resolve_preset(self.denoiser)
        self.seed = self.options.seed
        self.grad = self.options.grad
        self._fast_cache: dict = {}  # captured CUDA graphs are reused across forward calls

    def forward(self, x: torch.Tensor, seed: Seed = None) -> torch.Tensor:
        """Purify ``x`` [B, C, H, W] in [0, 1]; ``seed`` overrides the module's seed for this call (e.g. one EOT
        draw of an attack), reusing the captured CUDA graphs of earlier calls. With neither (module seed None),
        every call draws fresh private seeds (:func:`mimicfast.seeding.private_seeds`)."""
        return _purify_images(x, self.denoiser, self.preset, self.options, seed, fast_cache=self._fast_cache)

    def extra_repr(self) -> str:
        return f"preset={self.preset.name!r}, steps={self.preset.steps}, seed={self.seed!r}, grad={self.grad!r}"
