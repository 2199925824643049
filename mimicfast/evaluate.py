"""Accuracy of a classifier behind the MimicDiffusion purifier, clean and under attack (demo and RESULTS).

For one preset, on images ``x`` with labels ``y``:

* ``standard``: accuracy of ``f(P(x))`` (purified clean images);
* ``pgd``: accuracy of ``f(P(x_pgd))`` where ``x_pgd`` is PGD-Linf against the bare classifier -- an attack
  that ignores the purifier (the transfer setting of the paper's headline numbers);
* ``bpda_eot``: accuracy of ``f(P(x_bpda))`` where ``x_bpda`` is BPDA+EOT through the purifier itself.

The defense is always evaluated with seeds ``seed + i`` (image i); the attacks draw their purifier seeds
from a disjoint range (:mod:`mimicfast.attacks.bpda_eot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mimicfast.api import Purifier
from mimicfast.attacks import bpda_eot, pgd_linf
from mimicfast.presets import Preset, get_preset


@torch.no_grad()
def accuracy(classifier: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 500) -> float:
    """Top-1 accuracy of ``classifier`` (an ``nn.Module`` is put in eval mode) on ``x`` [N, C, H, W], ``y`` [N]."""
    if isinstance(classifier, nn.Module):
        classifier.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += (classifier(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / x.shape[0]


@dataclass(frozen=True)
class AttackSettings:
    """Threat model and attack budgets (all recorded with the numbers)."""

    eps: float = 0.1
    pgd_steps: int = 20
    bpda_steps: int = 10
    eot: int = 2
    seed: int = 0


def undefended(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings,
               progress: bool = False) -> tuple[dict, torch.Tensor]:
    """``({"clean", "pgd"}, x_pgd)``: the bare classifier, clean and under PGD-Linf."""
    x_pgd = pgd_linf(classifier, x, y, attack.eps, attack.pgd_steps, seed=attack.seed, progress=progress)
    return {"clean": accuracy(classifier, x, y), "pgd": accuracy(classifier, x_pgd, y)}, x_pgd


def defended(model: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, x_pgd: torch.Tensor,
             preset: str | Preset, steps: int, attack: AttackSettings, *, bpda: bool = True,
             progress: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """Accuracies ``{"standard", "pgd", "bpda_eot"}`` of ``classifier(purify(.))`` and the images behind them.

    ``steps`` is the respaced number of reverse steps used both by the defense and inside BPDA+EOT.
    ``bpda=False`` skips the (expensive) adaptive attack. The second value maps ``"purified"``,
    ``"purified_pgd"``, ``"x_bpda"``, ``"purified_bpda"`` to image batches.
    """
    # One Purifier for the defense and the attack's draws: on CUDA its graphs are captured once.
    defense = Purifier(model, preset=get_preset(preset).replace(steps=steps), seed=attack.seed, progress=progress)
    images = {"purified": defense(x), "purified_pgd": defense(x_pgd)}
    acc = {"standard": accuracy(classifier, images["purified"], y),
           "pgd": accuracy(classifier, images["purified_pgd"], y)}
    if bpda:
        images["x_bpda"] = bpda_eot(classifier, lambda u, seed: defense(u, seed=seed), x, y, attack.eps,
                                    attack.bpda_steps, eot=attack.eot, seed=attack.seed, progress=progress)
        images["purified_bpda"] = defense(images["x_bpda"])
        acc["bpda_eot"] = accuracy(classifier, images["purified_bpda"], y)
    return acc, images


def settings_record(preset: str | Preset, steps: int, attack: AttackSettings) -> dict:
    """Every knob behind a row of numbers, JSON-ready."""
    return {"preset": asdict(get_preset(preset).replace(steps=steps)), "attack": asdict(attack)}
