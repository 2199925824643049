"""The identity of an evaluation run: one frozen :class:`RunSpec` of everything that determines a row.

A results folder holds the rows of one spec. Its **identity** (:attr:`RunSpec.identity`) is the content of the
diffusion model, the classifier and the data (digests of what was loaded, not of file names), T, the threat model
and attack budget, the gradient mode and its tau, the run seed, the batch size, the device type, the dtype, the
package version, the ops backend and the torch version; its hash is the **spec id** that every row carries. What a
run *adds* to a folder is not part of the identity and may change from one run to the next: the defenses (each
named by its resolved settings, :func:`defense_label`, so a label always means the same settings), the attacks,
the number of scoring and choice draws and the number of images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from mimicfast.attacks import ATTACKS, default_eot
from mimicfast.presets import PRESETS, Preset

CLEAN = "clean"  # the no-attack row: the defense on the clean images (standard accuracy)
ATTACK_NAMES = (CLEAN, *ATTACKS)

# The fields of RunSpec that make up its identity (everything that determines a row).
IDENTITY = ("model", "classifier", "data", "steps", "eps", "norm", "attack_steps", "eot", "grad", "tau", "seed",
            "batch_size", "device_type", "dtype", "version", "backend", "torch")
# Preset fields a defense label never shows: the preset's own name (a user may set it to anything) and T (a
# field of the run).
_UNLABELLED = ("name", "steps")


@dataclass(frozen=True)
class Inputs:
    """What a run loaded: the diffusion network, the classifier, all images and labels, the number of classes."""

    net: nn.Module
    classifier: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    classes: int


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines an evaluation's rows, resolved once (:func:`mimicfast.evaluate.build_spec`).

    Identity (:data:`IDENTITY`): ``model``, ``classifier``, ``data`` (content digests), ``steps`` (T of every
    defense), ``eps``, ``norm``, ``attack_steps``, ``eot`` (None: each attack's default), ``grad``, ``tau``,
    ``seed``, ``batch_size``, ``device_type``, ``dtype``, ``version`` (mimicfast), ``backend`` (the ops backend on
    that device), ``torch``.

    What this run adds: ``presets`` (resolved, one purifier defense each), ``bare`` (also score the bare
    classifier, defense ``"none"``), ``attacks``, ``draws`` (scoring draws per image), ``choice_draws``
    (attack-side draws that pick the single submission), ``n`` (the first n images).

    How it runs: ``device``, ``threads``, ``progress``, ``trust_classifier_code`` (what loading the classifier
    was allowed to do), ``inputs`` (the loaded objects; not compared).
    """

    model: str
    classifier: str
    data: str
    steps: int
    eps: float
    norm: str
    attack_steps: int
    eot: int | None
    grad: str
    tau: float
    seed: int
    batch_size: int
    device_type: str
    dtype: str
    version: str
    backend: str
    torch: str
    presets: tuple[Preset, ...]
    bare: bool
    attacks: tuple[str, ...]
    draws: int
    choice_draws: int
    n: int
    device: str
    threads: int | None
    progress: bool
    trust_classifier_code: bool
    inputs: Inputs = field(compare=False, repr=False)

    @property
    def identity(self) -> dict:
        """The fields that determine a row, as JSON-able values."""
        return {name: getattr(self, name) for name in IDENTITY}

    @property
    def spec_id(self) -> str:
        """16 hex digits of the SHA-256 of :attr:`identity`."""
        return spec_id_of(self.identity)

    def attacks_for(self, preset: Preset | None) -> list[str]:
        """The attacks run against a defense: on the bare classifier ``pgd`` is ``transfer`` (PGD on the same
        model with the same seeds), so it runs once, as ``transfer``."""
        return [a for a in self.attacks if preset is not None or a != "pgd" or "transfer" not in self.attacks]

    def attack_label(self, attack: str, preset: Preset | None) -> str:
        """The attack's name in rows and tables, with its budget (:func:`attack_label`)."""
        return attack_label(attack, preset is not None, self.grad, self.attack_steps, self.eot)

    @property
    def defenses(self) -> list[tuple[str, Preset | None]]:
        """``(label, preset)`` per defense of this run, the bare classifier (``("none", None)``) first."""
        return [("none", None)] * self.bare + [(defense_label(p), p) for p in self.presets]


def attack_label(attack: str, purified: bool, grad: str, steps: int, eot: int | None) -> str:
    """An attack's name with the budget it ran at, so that a table never shows an attack without it.

    ``"clean"``; ``"transfer (10 it)"`` and, on the bare classifier, ``"pgd (10 it)"``; through the purifier
    (``purified``) the gradient mode, iterations and defense draws per gradient (``eot`` None: the attack's
    default, :func:`mimicfast.attacks.default_eot`): ``"aa-rand (bpda, 100 it, EOT 4)"``.
    """
    if attack == CLEAN:
        return attack
    if not purified or attack == "transfer":
        return f"{attack} ({steps} it)"
    return f"{attack} ({grad}, {steps} it, EOT {default_eot(attack) if eot is None else eot})"


def spec_id_of(identity: dict) -> str:
    """The spec id of an identity dict (as :attr:`RunSpec.identity` gives it or settings.json stores it)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def first_difference(old: dict, new: dict) -> str | None:
    """``"key: <old> there, <new> now"`` for the first key (in :data:`IDENTITY` order, then sorted) whose values
    differ, or None."""
    keys = [k for k in IDENTITY if k in old or k in new] + sorted((old.keys() | new.keys()) - set(IDENTITY))
    for key in keys:
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
    return None


def defense_label(preset: Preset) -> str:
    """A defense's name, derived from its settings only: the built-in preset it differs least from, then every
    field that differs (``"paper"``, ``"paper scale=0.003 window=None"``). Never the preset's ``name`` field."""
    fields = [f.name for f in dataclasses.fields(Preset) if f.name not in _UNLABELLED]

    def differing(base: Preset) -> list[str]:
        return [f for f in fields if getattr(preset, f) != getattr(base, f)]

    name, base = min(PRESETS.items(), key=lambda item: len(differing(item[1])))  # ties: the first preset
    return " ".join([name, *(f"{f}={_show(getattr(preset, f))}" for f in differing(base))])


def preset_record(preset: Preset) -> dict:
    """A preset as settings.json stores it (JSON values: the window as a list)."""
    return json.loads(json.dumps(dataclasses.asdict(preset)))


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
