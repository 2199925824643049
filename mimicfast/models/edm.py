"""NVlabs/edm networks (SongUNet DDPM++/NCSN++, DhariwalUNet/ADM) inside their preconditioners.

    >>> net = edm_network("EDMPrecond", img_resolution=32, img_channels=3, model_type="SongUNet",
    ...                   channel_mult=[2, 2, 2], augment_dim=9)
    >>> net.load_state_dict(state_dict)          # keys/shapes/buffers equal EDM's `ema.state_dict()`
    >>> D = net(x, sigma)                        # D(x, sigma), x = x0 + sigma * n in [-1, 1] image space

Implementation: :mod:`edm_layers` (Linear, Conv2d with FIR resampling, GroupNorm, UNetBlock, embeddings),
:mod:`edm_songunet`, :mod:`edm_dhariwal`, :mod:`edm_precond`.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from mimicfast.models.edm_dhariwal import DhariwalUNet
from mimicfast.models.edm_layers import UNetBlock
from mimicfast.models.edm_precond import PRECOND_CLASSES, EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from mimicfast.models.edm_songunet import SongUNet

__all__ = [
    "PRECOND_CLASSES",
    "DhariwalUNet",
    "EDMPrecond",
    "SongUNet",
    "UNetBlock",
    "VEPrecond",
    "VPPrecond",
    "edm_network",
    "iDDPMPrecond",
]


def edm_network(precond_class: str, **kwargs: Any) -> nn.Module:
    """Build an EDM preconditioned network from EDM's constructor kwargs (as in ``edm_*_kwargs.json``).

    Args:
        precond_class: ``"EDMPrecond"``, ``"VPPrecond"``, ``"VEPrecond"`` or ``"iDDPMPrecond"``.
        **kwargs: the precond's kwargs (``img_resolution``, ``img_channels``, ``label_dim``, ``use_fp16``,
            precond-specific ones such as ``sigma_data`` or ``beta_d``, ``model_type``) plus the inner network's
            (``model_channels``, ``channel_mult``, ``num_blocks``, ``attn_resolutions``, ...).

    Returns:
        The module, in train mode with randomly initialised parameters like any ``nn.Module``; load weights
        with ``load_state_dict`` (strict keys equal EDM's) or use :func:`mimicfast.models.load`.
        ``forward(x, sigma, class_labels=None, augment_labels=None) -> D(x, sigma)``; ``denoiser_kind`` is
        ``"x0_sigma"``. The constructor kwargs are kept in ``net.init_kwargs`` (with ``precond_class``) so that
        the network can be rebuilt (``mimicfast convert``).
    """
    cls = PRECOND_CLASSES.get(precond_class)
    if cls is None:
        raise ValueError(f"unknown EDM precond_class {precond_class!r}; expected one of {sorted(PRECOND_CLASSES)}")
    net = cls(**copy.deepcopy(kwargs))
    net.precond_class = precond_class
    net.init_kwargs = copy.deepcopy(kwargs)
    return net
