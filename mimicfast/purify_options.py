"""The settings of :func:`mimicfast.purify` and :class:`mimicfast.Purifier`, checked once into a frozen object.

:meth:`PurifyOptions.build` is the one place that lists, documents and checks the keyword arguments both accept
(a bad value fails there, before any work); the purifier itself reads only the resulting :class:`PurifyOptions`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mimicfast.errors import InputError
from mimicfast.fast.precision import resolve_autocast
from mimicfast.gradients import DEFAULT_TAU, check_grad_mode
from mimicfast.presets import Preset, default_scale, default_steps, get_preset
from mimicfast.sampling.denoisers import Denoiser
from mimicfast.seeding import expand_seeds, private_seeds
from mimicfast.validate import check_count

Seed = int | Sequence[int] | None


@dataclass(frozen=True)
class PurifyOptions:
    """Checked settings of a purification (see :meth:`build` for each one's meaning).

    ``preset`` is what the caller named (a name or a :class:`Preset`), ``steps`` the T asked for (None: the
    rule of :func:`mimicfast.presets.default_steps`), ``overrides`` the other preset fields changed;
    :meth:`resolve_preset` combines them for a model (its image size and tuned guidance scales).
    """

    preset: str | Preset = "paper"
    steps: int | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    seed: Seed = 0
    grad: str = "none"
    tau: float = DEFAULT_TAU
    batch_size: int | None = None
    device: torch.device | None = None
    progress: bool = False
    fast: bool | None = None
    autocast: str | None = None

    @classmethod
    def build(
        cls,
        *,
        preset: str | Preset = "paper",
        steps: int | None = None,
        seed: Seed = 0,
        grad: str = "none",
        tau: float = DEFAULT_TAU,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        fast: bool | None = None,
        autocast: str | None = None,
        **overrides: Any,
    ) -> PurifyOptions:
        """Check every setting; raises InputError naming the first bad one.

        Args:
            preset: ``"paper"``, ``"released"`` or a :class:`Preset`.
            steps: number of reverse steps T. Default: :func:`mimicfast.presets.default_steps` (a preset named
                ``"paper"``: 100 for models up to 64x64, 1000 above or for a model of unknown size; a
                :class:`Preset` object: its own ``steps``).
            seed: an int (image i gets ``seed + i``, so its result depends on its position in the batch), one
                seed per image, or None: fresh seeds from the operating system's entropy on every call
                (:func:`mimicfast.seeding.private_seeds`), which neither read nor advance torch's global
                generator. Same seeds, same output. Seeds are integers in [0, 2**64 - 1].
            grad: ``"none"`` (the output has no gradient; an ``x`` that requires grad is refused at once),
                ``"bpda"`` (backward = identity) or ``"full"`` (backward through every reverse step, ``sign``
                replaced by ``tanh(u / tau)`` in the backward pass only); see :mod:`mimicfast.gradients`. The
                forward output is bitwise the same in every mode.
            tau: temperature of the ``grad="full"`` surrogate (model units; default
                :data:`mimicfast.gradients.DEFAULT_TAU`).
            batch_size: images per sampler call (default: all at once on the CPU, as many as fit in free memory
                on CUDA); never changes the result. With ``grad="full"`` it is also the batch of the backward
                sweep, which holds one step's double-backward graph per image (15.5 GiB for the ImageNet-256
                model, README "Attacking the defense"): set it on a GPU.
            device: where to run (default: the model's device). The caller's model is never moved: a model on
                another device is copied there.
            progress: show a progress bar over the reverse steps.
            fast: use the fast path (:mod:`mimicfast.fast`: static buffers, CUDA-graph replay on CUDA). Default:
                on for CUDA, off on the CPU. Without autocast it computes exactly what the eager path computes.
                ``grad="full"`` always runs the eager path (it records each step's input).
            autocast: ``"bf16"`` or ``"fp16"`` runs the network in that precision on the fast path (the sampler
                state, coefficients and residual stay fp32); None keeps the working precision. Not with
                ``grad="full"``.
            **overrides: any other :class:`Preset` field, e.g. ``scale=0.5`` or ``window=None``.
        """
        tau = check_grad_mode(grad, tau)
        options = cls(
            preset=preset if isinstance(preset, Preset) else get_preset(preset).name,
            steps=steps,
            overrides=tuple(sorted(overrides.items())),
            seed=_checked_seed(seed),
            grad=grad,
            tau=tau,
            batch_size=None if batch_size is None else check_count(batch_size, "batch_size"),
            device=resolve_device(device),
            progress=_flag(progress, "progress"),
            fast=None if fast is None else _flag(fast, "fast"),
            autocast=autocast,
        )
        resolve_autocast(autocast)
        options.resolve_preset(None)  # a bad field fails now, not at the first call
        return options

    def resolve_preset(self, denoiser: Denoiser | None) -> Preset:
        """The preset to run on ``denoiser`` (None: an unknown model): :func:`resolve_preset`."""
        return resolve_preset(self.preset, self.steps, dict(self.overrides), denoiser)

    def seeds(self, batch: int, seed: Seed = None) -> list[int]:
        """One seed per image of a batch: ``seed`` (this call's) or else the options' seed; None draws
        :func:`mimicfast.seeding.private_seeds`."""
        chosen = self.seed if seed is None else seed
        return private_seeds(batch) if chosen is None else expand_seeds(chosen, batch)


def resolve_preset(
    preset: str | Preset, steps: int | None, overrides: dict[str, Any], denoiser: Denoiser | None = None
) -> Preset:
    """``preset`` with ``overrides`` (other :class:`Preset` fields) applied and T = ``steps``, for ``denoiser``
    (None: an unknown model). When ``steps`` is None, T is :func:`mimicfast.presets.default_steps` for the
    model's image size; when ``overrides`` sets no ``scale``, the scale is :func:`mimicfast.presets.default_scale`
    for the guidance scales the model declares."""
    image_size = None if denoiser is None else denoiser.image_size
    if steps is None:
        steps = default_steps(preset, image_size)
    if "scale" not in overrides:
        overrides = {**overrides, "scale": default_scale(preset, {} if denoiser is None else denoiser.guidance_scales)}
    return get_preset(preset).replace(**overrides, steps=steps)


def _checked_seed(seed: Seed) -> Seed:
    """``seed`` as given (a sequence as a tuple), after checking it: a bad seed fails at once."""
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        expand_seeds(seed, 1)
        return seed
    try:
        count = len(seed)
    except TypeError:
        count = 1
    return tuple(expand_seeds(seed, count))


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return value


def resolve_device(device: object) -> torch.device | None:
    """``device`` as a :class:`torch.device` that can run a purification here (None stays None)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device {device!r} is not a device: {exc}") from None
    if dev.type == "meta":
        raise InputError("device 'meta' holds no values; purify on 'cpu' or 'cuda'")
    if dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise InputError(f"device {str(dev)!r}: {dev.type} is not available on this machine")
        count = getattr(backend, "device_count", None)
        if dev.index is not None and count is not None and dev.index >= count():
            raise InputError(f"device {str(dev)!r}: this machine has {count()} {dev.type} device(s)")
    return dev
