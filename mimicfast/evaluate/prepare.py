"""``build_spec``: check every argument, load the inputs and resolve a :class:`~mimicfast.evaluate.spec.RunSpec`.

Everything that can be wrong with a run is found here, before anything is written: the device, thread count,
threat model, tau, counts, presets and overrides, the data and labels, and the classifier's answer on the first
batch (a tensor of logits ``[B, K]``, finite, with every label of the run in ``[0, K)``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mimicfast.api import resolve_preset
from mimicfast.errors import InputError
from mimicfast.evaluate.inputs import check_logits, load_classifier, load_data, load_model
from mimicfast.evaluate.spec import ATTACK_NAMES, CLEAN, Inputs, RunSpec, defense_label
from mimicfast.gradients import DEFAULT_TAU, check_grad_mode
from mimicfast.models.identity import model_digest, update_with_tensors
from mimicfast.ops._dispatch import backend_for
from mimicfast.presets import Preset, default_steps
from mimicfast.purify_options import resolve_device
from mimicfast.sampling.denoisers import Denoiser, as_denoiser
from mimicfast.seeding import check_seed
from mimicfast.validate import check_count, check_eps, check_norm
from mimicfast.version import __version__


def build_spec(
    *,
    data: str | Path | None = None,
    labels: str | Path | None = None,
    pad: bool = False,
    classifier: str | Path | None = None,
    classifier_class: str | None = None,
    classifier_kwargs: dict | None = None,
    trust_classifier_code: bool = False,
    checkpoint: str | Path | None = None,
    config: str | None = None,
    preset: str | Preset | Sequence[str | Preset] = "paper",
    steps: int | None = None,
    overrides: dict | None = None,
    defense: str | Sequence[str] = "purifier",
    attacks: str | Sequence[str] = (CLEAN, "transfer", "pgd"),
    eps: float = 0.1,
    norm: str = "Linf",
    attack_steps: int = 10,
    eot: int | None = None,
    grad: str = "bpda",
    tau: float | None = None,
    draws: int = 5,
    choice_draws: int = 3,
    n: int | None = 64,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
) -> RunSpec:
    """Check the arguments, load model, data and classifier, and return the run's spec.

    Args:
        data, labels, pad: the images and labels (:func:`mimicfast.evaluate.inputs.load_data`); default the
            bundled Fashion-MNIST test slice.
        classifier, classifier_class, classifier_kwargs: the classifier
            (:func:`mimicfast.evaluate.inputs.load_classifier`); default the bundled CNN.
        trust_classifier_code: allow loading a classifier that runs code (TorchScript, ``classifier_class``).
        checkpoint, config: the diffusion model, anything :func:`mimicfast.load` accepts; default the bundled UNet.
        preset: preset name(s) or :class:`~mimicfast.presets.Preset` (s), one defense each; ``steps`` (T) and
            ``overrides`` (preset fields other than ``name`` and ``steps``) apply to all.
        defense: ``"purifier"``, ``"none"`` (the bare classifier) or both.
        attacks: names from ``clean`` and :data:`mimicfast.attacks.ATTACKS`.
        eps, norm, attack_steps, eot: the threat model and attack budget (``eot`` None: each attack's default).
        grad, tau: the purifier's gradient inside attacks through it and the ``tanh(u / tau)`` temperature.
        draws: scoring draws per image (N of the protocols); choice_draws: the attack-side draws on which the
            attacker picks its single submission per image.
        n: the first ``n`` images of the data (None: all).
        seed: the run seed; every per-image seed derives from it (:mod:`mimicfast.evaluate.seeds`).
        batch_size: images per batch (the unit of resuming and sharding).
        device: ``cpu``, ``cuda`` or ``cuda:<k>``; threads: torch CPU threads per process; progress: tqdm bars.

    Raises:
        InputError: a bad argument, input or classifier (one line naming it).
    """
    attack_list, defense_list = _split(attacks), _split(defense)
    _check_names(attack_list, defense_list, norm)
    for name, value in (("--draws", draws), ("--choice-draws", choice_draws), ("--batch-size", batch_size),
                        ("--attack-steps", attack_steps), ("--eot", 1 if eot is None else eot),
                        ("--n", 1 if n is None else n), ("--threads", 1 if threads is None else threads),
                        ("--steps", 1 if steps is None else steps)):
        check_count(value, name)
    seed = check_seed(seed, "--seed")
    tau = check_grad_mode(grad, DEFAULT_TAU if tau is None else tau)
    eps = _check_eps(eps, norm)
    device = _check_device(device)
    net = load_model(None if checkpoint is None else Path(checkpoint), config, device)[0]
    denoiser = as_denoiser(net)
    presets = (_presets(preset, steps, dict(overrides or {}), denoiser)
               if "purifier" in defense_list else ())
    if steps is None:
        steps = _common_steps(presets, preset, denoiser.image_size)
    x, y, _ = load_data(None if data is None else Path(data), None if labels is None else Path(labels),
                        denoiser.channels or 3, denoiser.image_size, pad)
    if n is not None and n > len(y):
        raise InputError(f"--n must be in [1, {len(y)}] for this data, got {n}")
    n = len(y) if n is None else int(n)
    if norm == "L2" and eps > math.sqrt(x[0].numel()):
        raise InputError(f"--eps {eps:g} exceeds the L2 diameter of the image space ({math.sqrt(x[0].numel()):g})")
    classifier_path = None if classifier is None else Path(classifier)
    clf, classifier_id = load_classifier(classifier_path, classifier_class, classifier_kwargs, device,
                                         trust_code=trust_classifier_code)
    classes = _probe_classifier(clf, x, y, n, batch_size, device)
    return RunSpec(
        model=model_digest(net)[:32], classifier=classifier_id,
        data=_data_digest(x, y), steps=int(steps), eps=eps, norm=norm, attack_steps=int(attack_steps),
        eot=None if eot is None else int(eot), grad=grad, tau=tau, seed=seed, batch_size=int(batch_size),
        device_type=torch.device(device).type, dtype=str(x.dtype), version=__version__,
        backend=backend_for(torch.device(device).type), torch=torch.__version__, presets=presets,
        bare="none" in defense_list, attacks=tuple(dict.fromkeys(attack_list)), draws=int(draws),
        choice_draws=int(choice_draws), n=n, device=device, threads=threads, progress=progress,
        trust_classifier_code=trust_classifier_code, inputs=Inputs(net, clf, x, y, classes),
    )


def _probe_classifier(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, batch_size: int,
                      device: str) -> int:
    """The classifier's number of classes, from its logits on the first batch; every label of the run must be
    one of them."""
    batch = x[: min(batch_size, n)].to(device)
    with torch.no_grad():
        classes = check_logits(clf(batch), y[:n], len(batch))
    return classes


def _check_names(attacks: list[str], defenses: list[str], norm: str) -> None:
    unknown = [a for a in attacks if a not in ATTACK_NAMES]
    if unknown or not attacks:
        raise InputError(f"unknown attack(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ATTACK_NAMES)}")
    if not defenses or any(d not in ("none", "purifier") for d in defenses):
        raise InputError(f"--defense takes 'purifier', 'none' or both, got {','.join(defenses)!r}")
    check_norm(norm, "--norm")


def _check_eps(eps: object, norm: str) -> float:
    """A finite eps >= 0, for Linf at most 1 (the side of the image cube; L2 is checked against the image size
    once the data is loaded)."""
    eps = check_eps(eps, name="--eps")
    if norm == "Linf" and eps > 1:
        raise InputError(f"--eps must be at most 1 for Linf (pixels lie in [0, 1]), got {eps:g}")
    return eps


def _check_device(device: object) -> str:
    """``cpu``, ``cuda`` or ``cuda:<k>`` of a present GPU (checked by the purifier's
    :func:`~mimicfast.purify_options.resolve_device`), else InputError."""
    parsed = resolve_device(device)
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: the evaluation runs on cpu or cuda")
    return str(device)


def _presets(preset: object, steps: int | None, overrides: dict, denoiser: Denoiser) -> tuple[Preset, ...]:
    """The presets resolved for ``denoiser`` (:func:`mimicfast.purify_options.resolve_preset`: T and guidance
    scale by the package's rules unless given); ``--set steps`` (use ``--steps``) and ``--set name`` (defenses are
    named by their settings) are refused, as is the same defense twice."""
    for key, why in (("steps", "set T with --steps"), ("name", "a defense is named by its settings")):
        if key in overrides:
            raise InputError(f"--set {key}={overrides[key]!r} is not allowed: {why}")
    names = [preset] if isinstance(preset, (str, Preset)) else list(preset)
    if not names:
        raise InputError("--preset names no preset")
    resolved = tuple(resolve_preset(p, steps, overrides, denoiser) for p in names)
    labels = [defense_label(p) for p in resolved]
    twice = next((label for k, label in enumerate(labels) if label in labels[:k]), None)
    if twice is not None:
        raise InputError(f"--preset gives the defense {twice!r} twice")
    return resolved


def _split(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


def _data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """Digest of the images and labels as loaded (so a folder of pictures is identified by what was read)."""
    digest = hashlib.sha256(b"mimicfast eval data")
    update_with_tensors(digest, [("x", x), ("y", y)])
    return digest.hexdigest()[:32]


def _common_steps(presets: tuple[Preset, ...], preset: object, image_size: int | None) -> int:
    """T of a run without ``--steps``: the one default every defense takes (T is a field of the run, so
    presets whose defaults differ need ``--steps``); a bare-classifier run records the first preset's default."""
    defaults = {p.name: p.steps for p in presets}
    if len(set(defaults.values())) > 1:
        shown = ", ".join(f"{name} {steps}" for name, steps in defaults.items())
        raise InputError(f"the presets take different default T on this model ({shown}); pass --steps")
    if defaults:
        return next(iter(defaults.values()))
    first = preset if isinstance(preset, (str, Preset)) else next(iter(preset), "paper")
    return default_steps(first, image_size)
