"""What every attack shares: argument checks, per-image randomness, projections, losses, EOT, final selection.

Conventions (docs/DESIGN.md §7):

* Images are float tensors ``[B, C, H, W]`` in [0, 1]; ``model(x) -> logits [B, K]`` is any differentiable
  callable, possibly stochastic (a purifier drawing fresh randomness on every call).
* ``model`` is only ever called on the whole batch, in the same row order, a number of times that depends on the
  attack's settings and never on the data, so a wrapper can give row i its own defense seeds per call.
* The attack's own randomness (random starts, restarts) comes from one CPU generator per image seeded from that
  image's seed, never from torch's global generator, so ``x_adv[i]`` depends on ``x[i]``, ``y[i]``, ``seeds[i]``
  and the model's answers on row i only, not on its batch-mates.
* EOT (Athalye et al. 2018, "Synthesizing robust adversarial examples"): every gradient is the mean of ``eot``
  gradients, each from its own call of ``model``; the loss and the success rate of an iterate are the means over
  the same calls.
* The returned iterate is chosen, per image, by its success rate over *fresh* calls of ``model`` (not the calls
  that picked the candidates), so a lucky draw during the attack does not decide the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mimicfast.errors import InputError
from mimicfast.seeding import check_seed

Model = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Seeds = int | Sequence[int]

NORMS = ("Linf", "L2")

# Stream codes: each source of an attack's randomness draws from its own generator per image.
STREAM_PGD_START = 1
STREAM_APGD_START = 2


def check_args(
    x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int, eot: int, finite: bool = True
) -> None:
    """Validate the arguments every attack shares (``eps`` may be ``inf`` unless ``finite``); raises InputError."""
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"x must be a float tensor [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if y.shape != (x.shape[0],) or y.dtype != torch.int64:
        raise InputError(f"y must hold one int64 label per image ({x.shape[0]}), got {y.dtype} {tuple(y.shape)}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise InputError("x must be in [0, 1]")
    if not (eps >= 0 and (math.isfinite(eps) or not finite)):
        raise InputError(f"eps must be finite and >= 0, got {eps}" if finite else f"eps must be >= 0, got {eps}")
    if norm not in NORMS:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if eot < 1:
        raise InputError(f"eot must be >= 1, got {eot}")


def image_seeds(seeds: Seeds, n: int) -> list[int]:
    """One seed per image, each checked like a purifier seed (an integer in [0, 2**64 - 1]): an int is every
    image's seed; a sequence must hold ``n`` of them."""
    values = [seeds] * n if isinstance(seeds, int | np.integer) else list(seeds)
    if len(values) != n:
        raise InputError(f"seeds must be an int or one int per image ({n}), got {len(values)}")
    return [check_seed(s, f"seeds[{i}]") for i, s in enumerate(values)]


def generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator for one image and one purpose: ``seed`` mixed with ``stream`` by numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def per_image_draw(x: torch.Tensor, seeds: list[int], stream: tuple[int, ...], kind: str) -> torch.Tensor:
    """A tensor like ``x`` whose row i is drawn (``"uniform"`` U[0, 1) or ``"normal"``) from image i's generator.

    Drawn in float64 on the CPU, then cast, so the values do not depend on the device or the batch.
    """
    draw = torch.rand if kind == "uniform" else torch.randn
    rows = [draw(x.shape[1:], generator=generator(s, *stream), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device=x.device, dtype=x.dtype)


def lp_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of ``d [B, ...]``: ``max |d|`` (Linf) or ``sqrt(sum d^2)`` (L2), shape ``[B]``."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def rows_like(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image ``v [B]`` shaped to broadcast over ``like [B, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Map ``x_adv`` into the ``norm``-ball of radius ``eps`` around ``x``, then clip to [0, 1].

    Linf: clip each pixel to ``[x - eps, x + eps]`` (the exact projection onto the intersection with the box).
    L2: scale ``d = x_adv - x`` by ``min(1, eps / ||d||_2)``, then clip to [0, 1]. Clipping moves each pixel of
    ``x + d`` towards ``x`` (which lies in [0, 1]), so it never increases ``||d||``: the result lies in both sets
    (not always the Euclidean projection onto their intersection, as in Croce & Hein's reference code).
    """
    d = x_adv - x
    if norm == "Linf":
        d = d.clamp(-eps, eps)
    else:
        scale = (eps / lp_norm(d, "L2").clamp_min(1e-12)).clamp(max=1.0)
        d = d * rows_like(scale, d)
    return (x + d).clamp(0, 1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit ``norm``: ``sign(g)`` (Linf) or ``g / ||g||_2`` (L2); 0 where g = 0."""
    if norm == "Linf":
        return grad.sign()
    return grad / rows_like(lp_norm(grad, "L2").clamp_min(1e-12), grad)


def random_start(x: torch.Tensor, eps: float, norm: str, seeds: list[int], stream: tuple[int, ...]) -> torch.Tensor:
    """A random point of the threat model around ``x``, clipped to [0, 1], from each image's generator.

    Linf: ``x + eps * U(-1, 1)`` per pixel (Madry et al. 2018). L2: ``x + eps * t / ||t||_2``, ``t ~ N(0, I)``, a
    uniform direction on the sphere of radius eps (the start Croce & Hein's reference code uses).
    """
    if norm == "Linf":
        delta = eps * (2 * per_image_draw(x, seeds, stream, "uniform") - 1)
    else:
        t = per_image_draw(x, seeds, stream, "normal")
        delta = eps * t / rows_like(lp_norm(t, "L2").clamp_min(1e-12), t)
    return (x + delta).clamp(0, 1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i != y} z_i`` per image ``[B]`` (negative = misclassified)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy ``-log softmax(z)_y``, shape ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), per image ``[B]``.

    ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...`` the
    sorted logits: invariant to shifting and rescaling the logits. Needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise InputError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss}


def _logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise InputError(f"model must return logits [B={x.shape[0]}, K], got {getattr(logits, 'shape', logits)!r}")
    return logits.float()


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmax z != y`` per image ``[B]`` (bool)."""
    return logits.argmax(1) != y


def eot_gradient(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    eot: int,
    success_fn: LossFn = misclassified,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EOT estimates at ``x`` from ``eot`` calls of ``model`` on the whole batch.

    The draws of a stochastic defense can give gradients of very different sizes for the same image (the full
    gradient through MimicDiffusion varies by up to three orders of magnitude between draws), so a plain mean
    is the largest draw's gradient. Each draw's gradient is therefore normalised to unit L2 norm per image before
    averaging, and the average is scaled back by the draws' mean norm: every draw gets the same weight, the
    size stays that of a typical draw (C&W weighs it against its distortion term), and with one draw the
    result is the plain gradient.

    Returns:
        ``(grad [B, C, H, W], loss [B], success [B])``: the equally weighted mean over the calls of
        ``grad_x loss_fn(model(x), y)`` described above, the mean of the loss, and the mean of the success
        indicator ``success_fn(logits, y)`` (default: misclassified), a float in [0, 1].
    """
    direction = torch.zeros_like(x)
    size = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    loss = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    success = torch.zeros_like(loss)
    for _ in range(eot):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = _logits(model, x_in)
            if not logits.requires_grad:
                raise InputError(
                    "model's logits do not depend differentiably on x; a purifier inside it needs a gradient mode "
                    "(mimicfast.Purifier(..., grad='bpda' or 'full'))"
                )
            per_image = loss_fn(logits, y)
            (g,) = torch.autograd.grad(per_image.sum(), x_in, allow_unused=True)
        if g is not None:
            norm = g.flatten(1).norm(dim=1)
            direction += g / rows_like(norm.clamp(min=torch.finfo(g.dtype).tiny), g)
            size += norm
        loss += per_image.detach()
        success += success_fn(logits.detach(), y).float()
    return direction * rows_like(size / eot, x) / eot, loss / eot, success / eot


class BestIterates:
    """Per-image running bests of an attack: by EOT success rate (ties: higher loss) and by loss alone.

    ``update`` takes the EOT estimates of an iterate (from the calls that also gave its gradient).
    """

    def __init__(self, x: torch.Tensor) -> None:
        b = x.shape[0]
        self.by_success = x.clone()
        self.by_loss = x.clone()
        self.success = torch.full((b,), -1.0, device=x.device)
        self.loss_of_success = torch.full((b,), float("-inf"), device=x.device)
        self.loss = torch.full((b,), float("-inf"), device=x.device)

    def update(self, x_k: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        better = (success > self.success) | ((success == self.success) & (loss > self.loss_of_success))
        self.by_success = torch.where(rows_like(better, x_k), x_k, self.by_success)
        self.success = torch.where(better, success, self.success)
        self.loss_of_success = torch.where(better, loss, self.loss_of_success)
        higher = loss > self.loss
        self.by_loss = torch.where(rows_like(higher, x_k), x_k, self.by_loss)
        self.loss = torch.where(higher, loss, self.loss)


@torch.no_grad()
def select_final(
    model: Model, y: torch.Tensor, candidates: list[torch.Tensor], loss_fn: LossFn, draws: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the candidate with the highest success rate over ``draws`` fresh calls of ``model`` each.

    Ties go to the higher mean loss over the same calls, then to the earlier candidate. Costs
    ``len(candidates) * draws`` calls of ``model`` on the whole batch.

    Returns:
        ``(x_adv [B, C, H, W], success [B])``: the chosen candidates and their estimated success rates.
    """
    best = candidates[0]
    best_success = best_loss = None
    for cand in candidates:
        loss = torch.zeros(cand.shape[0], device=cand.device)
        success = torch.zeros_like(loss)
        for _ in range(draws):
            logits = _logits(model, cand)
            loss += loss_fn(logits, y)
            success += misclassified(logits, y).float()
        loss, success = loss / draws, success / draws
        if best_success is None:
            best, best_success, best_loss = cand, success, loss
            continue
        better = (success > best_success) | ((success == best_success) & (loss > best_loss))
        best = torch.where(rows_like(better, cand), cand, best)
        best_success = torch.where(better, success, best_success)
        best_loss = torch.where(better, loss, best_loss)
    return best, best_success
