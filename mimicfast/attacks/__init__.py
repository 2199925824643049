"""Attacks for robustness evaluation (docs/DESIGN.md §7), each written from its paper (APGD also from its authors' code).

Every attack in :data:`ATTACKS` has the signature

    attack(model, x, y, *, eps, norm="Linf", steps, eot=1, seeds=0, progress=False, **kw) -> x_adv

``model(x) -> logits [B, K]`` is any differentiable callable (a bare classifier, or a defended one such as
``nn.Sequential(mimicfast.Purifier(..., grad="bpda", seed=None), classifier)``); it is called on the whole batch,
in the same row order, :func:`model_calls` times whatever the data. ``seeds`` (an int ``s``: image i uses
``s + i``; or one int per image) seeds only the attack's own randomness, per image. ``eot_grad`` (``"mean"``,
default: the gradient of the mean loss over the ``eot`` calls; or ``"normalized"``) picks the EOT gradient
estimator (:func:`mimicfast.attacks.eot.eot_gradient`). ``x_adv`` lies within ``eps`` of ``x`` in ``norm`` and in [0, 1].

* ``transfer``, ``pgd``: PGD with EOT (Madry et al. 2018), :mod:`mimicfast.attacks.projected_gradient`;
* ``apgd-ce``, ``apgd-dlr``: APGD (Croce & Hein 2020), :mod:`mimicfast.attacks.autopgd`;
* ``aa-rand``: AutoAttack's ``rand`` protocol, :mod:`mimicfast.attacks.autoattack`;
* ``cw``: Carlini-Wagner L2 (Carlini & Wagner 2017), :mod:`mimicfast.attacks.carlini_wagner`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch

from mimicfast.attacks.autoattack import aa_rand, aa_rand_calls
from mimicfast.attacks.autopgd import APGDOptions, apgd, apgd_calls, apgd_checkpoints, apgd_with_success
from mimicfast.attacks.carlini_wagner import cw, cw_calls
from mimicfast.attacks.losses import ce_loss, dlr_loss
from mimicfast.attacks.projected_gradient import pgd, pgd_calls
from mimicfast.errors import InputError

apgd_ce = partial(apgd, loss="ce")
apgd_dlr = partial(apgd, loss="dlr")

ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "transfer": pgd,
    "pgd": pgd,
    "apgd-ce": apgd_ce,
    "apgd-dlr": apgd_dlr,
    "aa-rand": aa_rand,
    "cw": cw,
}

_CALLS: dict[str, Callable[..., int]] = {
    "transfer": pgd_calls,
    "pgd": pgd_calls,
    "apgd-ce": apgd_calls,
    "apgd-dlr": apgd_calls,
    "aa-rand": aa_rand_calls,
    "cw": cw_calls,
}


def default_eot(name: str) -> int:
    """The ``eot`` an attack uses when none is given (``aa-rand``: 20, as AutoAttack's ``rand``; the others: 1)."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    return int(inspect.signature(ATTACKS[name]).parameters["eot"].default)


def model_calls(name: str, **kw: object) -> int:
    """How many times ``ATTACKS[name](model, x, y, **kw)`` calls ``model`` (the same for any data).

    >>> model_calls("aa-rand", steps=100, eot=20)
    4160
    """
    if name not in _CALLS:
        raise InputError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    return _CALLS[name](**kw)


__all__ = [
    "ATTACKS",
    "APGDOptions",
    "aa_rand",
    "apgd",
    "apgd_ce",
    "apgd_checkpoints",
    "apgd_dlr",
    "apgd_with_success",
    "ce_loss",
    "cw",
    "default_eot",
    "dlr_loss",
    "model_calls",
    "pgd",
]
