"""Gradient modes of the purifier: what ``backward`` means for ``P(x)`` (docs/DESIGN.md §7).

MimicDiffusion's output depends on x_adv only through ``sign(x0_hat - y)`` and ``sign(H x0_hat - H y)``
(``y = 2 x_adv - 1``), so the exact gradient of the purified image w.r.t. x_adv is zero almost everywhere and an
exact-gradient attack sees nothing. Two surrogates make the defense attackable; neither changes the forward:

* ``"bpda"`` (Athalye et al. 2018, Backward Pass Differentiable Approximation): the backward pass is the
  identity, ``dP/dx ~= I``, so the attack gradient is the classifier's gradient at ``P(x)``.
* ``"full"``: backpropagate through every reverse step of Algorithm 1 (the network, the guidance VJP ``J^T r``
  with its second-order term, the residual ``r``), with ``sign(u)`` replaced *in the backward pass only* by
  ``tanh(u / tau)`` (straight-through: the forward values are the exact ones). The forward keeps only each
  step's input ``x_i`` and noise ``z_i``; the backward sweep recomputes step i from them and differentiates it,
  so the peak memory is about one step's (with its double backward), not T steps'.

``"none"`` keeps the output without gradient (the fastest forward; an input that requires grad is refused).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from mimicfast.errors import InputError
from mimicfast.presets import Preset
from mimicfast.sampling.denoisers import Denoiser
from mimicfast.sampling.guidance import MimicGuidance
from mimicfast.sampling.step import StepCoefficients, reverse_step, uses_learned_variance
from mimicfast.upsample_mode import SCALE, UpsampleMode

GRAD_MODES = ("none", "bpda", "full")

DEFAULT_TAU = 1.0
"""Default temperature of the ``tanh(u / tau)`` surrogate of ``sign(u)`` in ``grad="full"`` (u = x0_hat - y in model
units, [-2, 2]). Measured on the bundled model (README, "Attacking the defense"): the cosine between the full and
the BPDA gradient rises from about 0 at tau = 0.02-0.05 to 0.21 at tau = 1 and stays there at 2; PGD with the full
gradient at tau = 1 beat BPDA. A small tau passes gradient only where ``|u| < tau``: sparse and uninformative."""


def check_grad_mode(grad: object, tau: object) -> float:
    """Validate ``grad`` and ``tau``; returns ``tau`` as a float."""
    if grad not in GRAD_MODES:
        raise InputError(
            f"grad must be one of {GRAD_MODES}: 'none' (no gradient), 'bpda' (identity backward), "
            f"'full' (through every reverse step); got {grad!r}"
        )
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise InputError(f"tau must be a finite number > 0, got {tau!r}")
    return float(tau)


def check_requires_grad(x: torch.Tensor, grad: str) -> None:
    """Refuse at once an input that needs a gradient the mode cannot give (instead of an autograd error later)."""
    if grad == "none" and x.requires_grad and torch.is_grad_enabled():
        raise InputError(
            "x requires grad but the purifier was built with grad='none', whose output has no gradient; "
            "choose grad='bpda' (identity backward, BPDA) or grad='full' (backpropagate through every reverse "
            "step), or pass x.detach()"
        )


class _Identity(torch.autograd.Function):
    """Forward: ``run(x)``; backward: the identity (BPDA)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return run(x.detach())

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_out, None


def bpda(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``run(x)`` (bitwise) whose vector-Jacobian product w.r.t. ``x`` is the identity."""
    return _Identity.apply(x, run)


@dataclass
class Trajectory:
    """What the forward of ``grad="full"`` keeps of one batch: step i's input and noise, nothing else.

    Attributes:
        xs: ``xs[i]`` is the input of reverse step i ([b, C, H, W], sigma space), i = 0..T-1; ``xs[T]`` is the
            output.
        zs: ``zs[i]`` is the standard normal noise drawn for step i (the last step's draw, if any, is unused).
    """

    xs: list[torch.Tensor] = field(default_factory=list)
    zs: list[torch.Tensor] = field(default_factory=list)

    def record_noise(self, noise: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Wrap a noise source so that every draw after the first (x_T's) is kept."""
        calls = 0

        def draw() -> torch.Tensor:
            nonlocal calls
            z = noise()
            if calls:
                self.zs.append(z)
            calls += 1
            return z

        return draw

    def record_step(self, i: int, x_next: torch.Tensor, x0_hat: torch.Tensor) -> None:
        """Sampler callback: keep the input of step i + 1."""
        self.xs.append(x_next)


def _dtanh(u: torch.Tensor, tau: float) -> torch.Tensor:
    """d/du tanh(u / tau)."""
    return (1 - torch.tanh(u / tau) ** 2) / tau


def _upsample(x: torch.Tensor, mode: UpsampleMode) -> torch.Tensor:
    kw = {"align_corners": False} if mode is UpsampleMode.BICUBIC else {}
    return F.interpolate(x, scale_factor=SCALE, mode=mode.interpolate_mode, **kw)


class _StraightThroughResidual(torch.autograd.Function):
    """The guidance residual's exact value forward; the Hessian of a smooth loss backward.

    Forward: ``exact(x0_hat, y)``, the residual the sampler uses: ``r = long_w s(d) + short_w H^T s(H d)``,
    ``d = x0_hat - y``, with ``s = sign`` (L1) or ``s(u) = 2u`` (squared L2).
    Backward: ``dr/dd^T g = long_w s'(d) g + short_w H^T (s'(H d) H g)`` (symmetric) and ``dr/dy = -dr/dd``,
    with ``s'(u) = tanh'(u / tau) / tau`` for L1 (the Hessian of ``tau log cosh(u / tau)``, i.e. ``sign``
    smoothed to ``tanh(u / tau)``) and ``s' = 2`` for L2 (exact).
    """

    @staticmethod
    def forward(ctx, x0_hat, y, exact, distance, mode, long_w, short_w, tau):
        ctx.save_for_backward(x0_hat, y)
        ctx.args = (distance, mode, long_w, short_w, tau)
        return exact(x0_hat, y)

    @staticmethod
    def backward(ctx, g):
        x0_hat, y = ctx.saved_tensors
        distance, mode, long_w, short_w, tau = ctx.args

        def slope(u: torch.Tensor) -> torch.Tensor | float:
            return _dtanh(u, tau) if distance == "l1" else 2.0

        d = x0_hat.to(g.dtype) - y.to(g.dtype)
        gd = long_w * slope(d) * g
        if short_w and mode is not UpsampleMode.NONE:
            with torch.enable_grad():
                z = torch.zeros_like(d, requires_grad=True)
                w = slope(_upsample(d, mode)) * _upsample(g, mode)
                (adj,) = torch.autograd.grad(_upsample(z, mode), z, w)  # H^T w
            gd = gd + short_w * adj
        return gd.to(x0_hat.dtype), -gd.to(y.dtype), None, None, None, None, None, None


class SurrogateGuidance:
    """A :class:`mimicfast.sampling.guidance.MimicGuidance` whose residual is differentiable in ``x0_hat`` and
    ``y`` (straight-through: same values, ``sign`` smoothed to ``tanh(u / tau)`` in the backward pass only)."""

    def __init__(self, guidance: MimicGuidance, tau: float) -> None:
        self.active, self.coef, self.jacobian, self.y = guidance.active, guidance.coef, guidance.jacobian, guidance.y
        preset = guidance.preset
        mode = UpsampleMode.parse(preset.upsample if guidance.short_w else None)
        self._args = (guidance.residual, preset.distance, mode, guidance.long_w, guidance.short_w, tau)

    def residual(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``r`` [B, C, H, W]: the exact residual's value, the surrogate's derivative."""
        return _StraightThroughResidual.apply(x0_hat, y, *self._args)


def reverse_sweep(
    denoiser: Denoiser,
    preset: Preset,
    y: torch.Tensor,
    trajectory: Trajectory,
    grad_out: torch.Tensor,
    *,
    tau: float,
    progress: bool = False,
) -> torch.Tensor:
    """``dL/dy`` from ``dL/dx_T`` (``grad_out``, the gradient w.r.t. the sampler's output x at sigma = 0).

    Walks the steps backwards; step i is recomputed from ``trajectory.xs[i]`` and ``zs[i]`` with
    :func:`mimicfast.sampling.step.reverse_step` (``differentiable=True``: the guided VJP with
    ``create_graph``), its VJP w.r.t. ``(x_i, y)`` taken, and its graph freed before step i - 1. So at most one
    step's graph (forward, VJP and their double backward) is alive: memory does not grow with T beyond the
    trajectory itself (2 T tensors of one image batch). Attention runs on the math backend (double backward).

    Args:
        denoiser, preset: those of the forward.
        y: [B, C, H, W] the guidance target in model space (working dtype).
        trajectory: the forward's record (:class:`Trajectory`).
        grad_out: [B, C, H, W] ``dL/dx_0`` in sigma space (= model space at sigma = 0).
        tau: temperature of the ``tanh`` surrogate of ``sign``.
        progress: show a tqdm bar over the steps.

    Returns:
        ``dL/dy`` [B, C, H, W] in y's dtype.
    """
    from tqdm.auto import tqdm

    sigmas = denoiser.sigmas(preset.steps, preset.spacing)
    coef = StepCoefficients.build(sigmas, preset.eta, device=y.device, dtype=y.dtype)
    guidance = SurrogateGuidance(MimicGuidance(y, preset, sigmas), tau)
    learned = uses_learned_variance(denoiser, preset.learned_variance, preset.eta)
    y_req = y.detach().requires_grad_(True)
    g_x, g_y = grad_out.to(y.dtype), torch.zeros_like(y)
    steps = len(sigmas) - 1
    for i in tqdm(reversed(range(steps)), total=steps, disable=not progress, desc="backward", leave=False):
        x_i = trajectory.xs[i].detach().requires_grad_(True)
        z_i = trajectory.zs[i] if i < len(trajectory.zs) else torch.zeros_like(x_i)  # the last step adds no noise
        guided = guidance.active[i]
        with torch.enable_grad(), math_attention():
            # [0]: x0_hat is not kept, or its graph would outlive the step
            x_next = reverse_step(
                denoiser, x_i, y_req, i, z_i, coef, guidance=guidance if guided else None,
                learned_variance=learned, clip_denoised=preset.clip_denoised, differentiable=True,
            )[0]  # fmt: skip
            grads = torch.autograd.grad(x_next, (x_i, y_req) if guided else (x_i,), g_x)
        g_x = grads[0]
        if guided:
            g_y = g_y + grads[1]
        del x_next, grads
    return g_y


def math_attention():
    """Scaled-dot-product attention on the math backend: the CPU flash kernel has no double backward, which the
    full gradient needs (the backward of the guidance VJP ``J^T r`` differentiates the network twice)."""
    return sdpa_kernel(SDPBackend.MATH)


class _FullGradient(torch.autograd.Function):
    """Forward: ``forward(x) -> (images, state)``; backward: ``backward(state, grad_images) -> grad_x``."""

    @staticmethod
    def forward(ctx, x, forward, backward):
        images, state = forward(x.detach())
        ctx.state, ctx.backward_fn = state, backward
        return images

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.state is None:
            raise RuntimeError(
                "grad='full' keeps its trajectory for one backward pass; run the purifier again for another"
            )
        state, ctx.state = ctx.state, None  # the trajectories are freed as soon as the sweep ends
        return ctx.backward_fn(state, grad_out), None, None


def full_gradient(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, object]],
    backward: Callable[[object, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """``forward(x)[0]`` (bitwise) whose VJP w.r.t. ``x`` is ``backward(state, grad)`` (the reverse sweep)."""
    return _FullGradient.apply(x, forward, backward)
