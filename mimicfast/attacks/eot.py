"""EOT (Athalye et al. 2018, "Synthesizing robust adversarial examples"): the gradient, loss and success of an
iterate estimated from several calls of a possibly stochastic ``model``."""

from __future__ import annotations

import torch

from mimicfast.attacks.checks import LossFn, Model, logits_of
from mimicfast.attacks.losses import misclassified
from mimicfast.attacks.projection import rows_like
from mimicfast.errors import InputError

EOT_GRADS = ("mean", "normalized")


def check_eot_grad(eot_grad: str) -> None:
    """Raise InputError unless ``eot_grad`` names an estimator of :func:`eot_gradient`."""
    if eot_grad not in EOT_GRADS:
        raise InputError(f"eot_grad must be one of {EOT_GRADS}, got {eot_grad!r}")


def eot_gradient(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    eot: int,
    success_fn: LossFn = misclassified,
    eot_grad: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EOT estimates at ``x`` from ``eot`` calls of ``model`` on the whole batch.

    ``eot_grad="mean"`` (default, as Athalye et al. and Croce & Hein's reference APGD): the gradient of the mean
    loss over the calls, i.e. the mean of the per-call gradients.

    ``eot_grad="normalized"``: each call's gradient is scaled to unit L2 norm per image before averaging, and the
    average is scaled back by the calls' mean norm, so every call gets the same weight whatever its size (the
    full gradient through MimicDiffusion can vary by orders of magnitude between draws, making the plain mean the
    largest draw's gradient); with one call it is the plain gradient.

    Returns:
        ``(grad [B, C, H, W], loss [B], success [B])``: the gradient estimate above, the mean of
        ``loss_fn(model(x), y)`` over the calls, and the mean of the success indicator ``success_fn(logits, y)``
        (default: misclassified), a float in [0, 1].
    """
    check_eot_grad(eot_grad)
    total = torch.zeros_like(x)
    size = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    loss = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    success = torch.zeros_like(loss)
    for _ in range(eot):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = logits_of(model, x_in)
            if not logits.requires_grad:
                raise InputError(
                    "model's logits do not depend differentiably on x; a purifier inside it needs a gradient mode "
                    "(mimicfast.Purifier(..., grad='bpda' or 'full'))"
                )
            per_image = loss_fn(logits, y)
            (g,) = torch.autograd.grad(per_image.sum(), x_in, allow_unused=True)
        if g is not None:
            if eot_grad == "mean":
                total += g
            else:
                norm = g.flatten(1).norm(dim=1)
                total += g / rows_like(norm.clamp(min=torch.finfo(g.dtype).tiny), g)
                size += norm
        loss += per_image.detach()
        success += success_fn(logits.detach(), y).float()
    grad = total / eot if eot_grad == "mean" else total * rows_like(size / eot, x) / eot
    return grad, loss / eot, success / eot
