"""Choosing the iterate an attack returns: running bests during the attack, then a choice per image by the success
rate over *fresh* calls of ``model`` (not the calls that picked the candidates), so a lucky draw during the attack
does not decide the result against a randomized defense."""

from __future__ import annotations

import torch

from mimicfast.attacks.checks import LossFn, Model, logits_of
from mimicfast.attacks.losses import misclassified
from mimicfast.attacks.projection import rows_like


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
            logits = logits_of(model, cand)
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
