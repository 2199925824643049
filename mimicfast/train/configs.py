"""Hyper-parameters of the training commands, importable without torch (``mimicfast train --help`` builds its
options from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClassifierConfig", "DDPMConfig"]


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :func:`train_classifier` (all recorded in the checkpoint)."""

    width: int = 16
    steps: int = 2400
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 200


@dataclass
class DDPMConfig:
    """Hyper-parameters of :func:`train_ddpm` (recorded in the checkpoint and the exported JSON)."""

    steps: int = 8000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    num_channels: int = 32
    num_res_blocks: int = 1
    seed: int = 0
    checkpoint_every: int = 100
    bf16: bool = True
    #: Warm start: a safetensors file of this architecture (e.g. the shipped EMA) that both the model and its
    #: EMA start from; "" starts from the seeded random initialisation.
    init: str = ""
    #: After the warm-up, decay the learning rate along a cosine to 0 at ``steps`` (False: constant).
    cosine_lr: bool = False
