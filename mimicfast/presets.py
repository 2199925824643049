"""MimicDiffusion presets: every knob of the method as a frozen dataclass (docs/DESIGN.md §2).

``paper`` is Algorithm 1 as the paper states it; ``released`` reproduces the authors' public code
(psky1111/MimicDiffusion, CIFAR-10). Every field can be overridden::

    preset = get_preset("paper").replace(scale=0.5, window=None)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from mimicfast.errors import InputError


@dataclass(frozen=True)
class Preset:
    """Settings of one MimicDiffusion purification.

    Attributes:
        name: label used in reports.
        steps: number of reverse steps T (respaced from the model's 1000 training steps when smaller).
        spacing: which T of the 1000 training timesteps are used: ``"uniform"`` is guided-diffusion's
            ``space_timesteps`` (0, ..., 999 evenly, rounded); ``"released"`` is the authors' code,
            ``t_k = k * 1000 // T - 1`` for k = 1..T (9, 19, ..., 999 for T = 100).
        window: ``(e, s)`` fractions of T; step k (k = T for the first, noisiest step, down to 1) is guided
            iff ``e*T <= k <= s*T``. ``None`` guides every step (the "no window" ablation).
        upsample: H of the short-range term: ``"bicubic"`` (paper), ``"nearest"`` (released code), or
            ``None`` (long-range only).
        long_range: include the long-range term ``||x0_hat - y||`` (False = short-range-only ablation).
        distance: ``"l1"`` (paper) or ``"l2"`` (squared L2, the Table 5 ablation).
        reduction: ``"sum"`` sums each term over pixels (paper's ``||.||_1``); ``"mean"`` is the released
            code's channel-wise L1 averaged over ``reduction_batch * H * W`` (each term over its own size).
        reduction_batch: the batch size the released code averaged over (16); fixed, so an image's result
            never depends on its batch-mates.
        rt: guided factor R_t: ``"inverse_abar_sq"`` = ``scale / abar_t**2`` (paper Eq. 14 with
            x_t = sqrt(abar) x0 + ...); ``"sqrt_abar"`` = ``scale * sqrt(abar_t)`` (released code).
        scale: multiplier of R_t.
        jacobian: ``"vjp"`` backpropagates through the denoiser (paper); ``"constant_eps"`` holds the
            predicted noise constant, J = 1/sqrt(abar_t) (released code).
        eta: ancestral noise; 1 is the DDPM posterior step, 0 is DDIM.
        learned_variance: use the model's learned variance when it has one (guided-diffusion
            ``learn_sigma``); the released code discards it.
        clip_denoised: clamp x0_hat to [-1, 1] in the reverse step (guided-diffusion's default); the
            guidance loss always uses the unclipped x0_hat of Eq. 3.
        clamp_output: clamp the purified images to [0, 1] (default, both presets). The released code does not
            clip its last x0_hat and hands the classifier the image as it is, often outside [0, 1];
            ``clamp_output=False`` returns that unclamped image (``purify(x, m, preset="released",
            clamp_output=False)``), which then no longer lies in [0, 1].
    """

    name: str
    steps: int
    spacing: Literal["uniform", "released"]
    window: tuple[float, float] | None
    upsample: Literal["bicubic", "nearest"] | None
    long_range: bool
    distance: Literal["l1", "l2"]
    reduction: Literal["sum", "mean"]
    reduction_batch: int
    rt: Literal["inverse_abar_sq", "sqrt_abar"]
    scale: float
    jacobian: Literal["vjp", "constant_eps"]
    eta: float
    learned_variance: bool
    clip_denoised: bool
    clamp_output: bool = True

    def __post_init__(self) -> None:
        # Every knob is checked (and numpy / torch scalars normalised to Python numbers) here, so that a NaN
        # or a wrongly typed value fails with its name instead of turning the output into NaN.
        if not isinstance(self.name, str):
            raise InputError(f"preset field 'name' must be a str, got {type(self.name).__name__}")
        _check_choice("spacing", self.spacing, ("uniform", "released"))
        _check_choice("upsample", self.upsample, ("bicubic", "nearest", None))
        _check_choice("distance", self.distance, ("l1", "l2"))
        _check_choice("reduction", self.reduction, ("sum", "mean"))
        _check_choice("rt", self.rt, ("inverse_abar_sq", "sqrt_abar"))
        _check_choice("jacobian", self.jacobian, ("vjp", "constant_eps"))
        for field in ("long_range", "learned_variance", "clip_denoised", "clamp_output"):
            if not isinstance(getattr(self, field), bool):
                raise InputError(f"preset field {field!r} must be True or False, got {getattr(self, field)!r}")
        self._set("steps", _integer("steps", self.steps, 1, 1000))
        self._set("reduction_batch", _integer("reduction_batch", self.reduction_batch, 1, None))
        self._set("scale", _real("scale", self.scale, 0.0, None))
        self._set("eta", _real("eta", self.eta, 0.0, 1.0))
        if self.window is not None:
            window = self.window
            if isinstance(window, (str, bytes)) or not isinstance(window, (tuple, list)) or len(window) != 2:
                raise InputError(f"window must be None or a pair (e, s) of numbers, got {window!r}")
            e, s = (_real(f"window[{k}]", v, 0.0, 1.0) for k, v in enumerate(window))
            if e > s:
                raise InputError(f"window (e, s) must satisfy 0 <= e <= s <= 1, got {window!r}")
            self._set("window", (e, s))
        if not self.long_range and self.upsample is None:
            raise InputError("guidance has no term: long_range=False and upsample=None")

    def _set(self, field: str, value: object) -> None:
        object.__setattr__(self, field, value)  # the dataclass is frozen; normalising happens once, here

    def replace(self, **changes) -> Preset:
        """A copy with some fields changed (unknown field names raise)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"unknown preset field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def _check_choice(field: str, value, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"preset field {field!r} must be one of {choices}, got {value!r}")


def _integer(field: str, value: object, lo: int, hi: int | None) -> int:
    """``value`` as a Python int in [lo, hi] (numpy / 0-d torch integers accepted; bools, floats, NaN not)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"preset field {field!r} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InputError(f"preset field {field!r} must be {'in ' if hi is not None else ''}{bound}, got {value}")
    return value


def _real(field: str, value: object, lo: float, hi: float | None) -> float:
    """``value`` as a finite Python float in [lo, hi] (ints, numpy and 0-d torch numbers accepted)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"preset field {field!r} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        bound = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise InputError(
            f"preset field {field!r} must be a finite number {'in ' if hi is not None else ''}{bound}, got {value}"
        )
    return value


PAPER = Preset(
    name="paper",
    steps=1000,
    spacing="uniform",
    window=(0.2, 0.5),
    upsample="bicubic",
    long_range=True,
    distance="l1",
    reduction="sum",
    reduction_batch=1,
    rt="inverse_abar_sq",
    scale=0.01,
    jacobian="vjp",
    eta=1.0,
    learned_variance=True,
    clip_denoised=True,
)

RELEASED = Preset(
    name="released",
    steps=100,
    spacing="released",
    window=(0.11, 0.79),
    upsample="nearest",
    long_range=True,
    distance="l1",
    reduction="mean",
    reduction_batch=16,
    rt="sqrt_abar",
    scale=3000.0,
    jacobian="constant_eps",
    eta=1.0,
    learned_variance=False,
    clip_denoised=False,
)

PRESETS: dict[str, Preset] = {"paper": PAPER, "released": RELEASED}


def get_preset(preset: str | Preset) -> Preset:
    """Look a preset up by name (``"paper"``, ``"released"``), or pass a :class:`Preset` through."""
    if isinstance(preset, Preset):
        return preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or pass a Preset")
    return PRESETS[preset]


#: Largest image side for which the paper preset's default T is :data:`SMALL_MODEL_STEPS`.
SMALL_MODEL_SIZE = 64
#: The paper's T for 32x32 and 64x64 models (its CIFAR-10 experiments); larger models take the preset's 1000.
SMALL_MODEL_STEPS = 100


def default_scale(preset: str | Preset, model_scales: Mapping[str, float]) -> float:
    """The guidance scale used when none is given: the one rule of the API and of every command.

    A :class:`Preset` object keeps its own ``scale``. A preset named ``name`` takes the scale the model declares
    as tuned for ``name`` (its config's ``guidance_scale``, e.g. the bundled Fashion-MNIST UNet's
    ``{"released": 1000}``, chosen by measurement in docs/MODEL_CARD.md), else the preset's own (the paper gives
    no value; ``released`` keeps the authors' 3000).
    """
    p = get_preset(preset)
    if isinstance(preset, str) and preset in model_scales:
        return float(model_scales[preset])
    return p.scale


def default_steps(preset: str | Preset, image_size: int | None) -> int:
    """The number of reverse steps T used when none is given: the one rule of the API and of every command.

    A :class:`Preset` object keeps its own ``steps``. A preset named ``"paper"`` takes the paper's T for the
    model's resolution: 100 for models up to 64x64, 1000 (the preset's) above or when the size is unknown
    (a plain callable). ``"released"`` takes its own 100.
    """
    p = get_preset(preset)
    if isinstance(preset, str) and preset == "paper" and image_size is not None and image_size <= SMALL_MODEL_SIZE:
        return SMALL_MODEL_STEPS
    return p.steps
