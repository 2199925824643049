"""``mimicfast.evaluate.run``: robust accuracy of a classifier behind MimicDiffusion, resumable and shardable.

For every defense (the bare classifier ``"none"``, or the purifier with a preset), every attack and every image:
make the adversarial example (``clean`` makes none; ``transfer`` attacks the bare classifier; every other attack
goes through ``classifier(purifier(.))`` with gradients ``grad`` and fresh defense draws per call, EOT), then
classify ``purifier(x_adv)`` with N independent defense draws and write one row per draw
(:mod:`mimicfast.evaluate.store`). The protocols (own seed, worst of N, majority of N) are computed from the rows
(:mod:`mimicfast.evaluate.summary`).

Work is cut into batches of ``batch_size`` consecutive images (batch b = images ``[b*B, (b+1)*B)``); under
``torchrun`` rank r takes batches ``r, r + W, ...``. Every image's seeds depend only on its dataset index
(:mod:`mimicfast.evaluate.seeds`) and every batch has the same members whatever the number of processes, so the
rows of a sharded run equal a single-process run's bit for bit (same device, dtype and threads per process).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mimicfast.api import Purifier, resolve_preset
from mimicfast.attacks import ATTACKS
from mimicfast.errors import InputError
from mimicfast.evaluate import store
from mimicfast.evaluate.inputs import load_classifier, load_data, load_model
from mimicfast.evaluate.seeds import DefendedModel, image_seeds
from mimicfast.evaluate.summary import summarize
from mimicfast.presets import Preset
from mimicfast.sampling.denoisers import as_denoiser

CLEAN = "clean"  # the no-attack row: the defense on the clean images (standard accuracy)
ATTACK_NAMES = (CLEAN, *ATTACKS)


def attack_label(attack: str, defended: bool, grad: str) -> str:
    """The attack's name in rows and tables: attacks through the purifier carry their gradient mode."""
    return f"{attack} ({grad})" if defended and attack not in (CLEAN, "transfer") else attack


def defense_label(preset: Preset, overrides: dict) -> str:
    """``paper`` or, with overrides, e.g. ``paper scale=0.003``."""
    return " ".join([preset.name, *(f"{k}={v}" for k, v in sorted(overrides.items()))])


def run(
    out: str | Path,
    *,
    data: str | Path | None = None,
    labels: str | Path | None = None,
    pad: bool = False,
    classifier: str | Path | None = None,
    classifier_class: str | None = None,
    classifier_kwargs: dict | None = None,
    checkpoint: str | Path | None = None,
    config: str | None = None,
    preset: str | Sequence[str] = "paper",
    steps: int | None = 20,
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
    n: int | None = 64,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
) -> dict | None:
    """Evaluate and write ``out`` (see :mod:`mimicfast.evaluate.store`); returns the summary (on rank 0).

    Args:
        out: results folder; a rerun with the same settings resumes it, other settings are refused.
        data, labels, pad: the images and labels (:func:`mimicfast.evaluate.inputs.load_data`); default the
            bundled Fashion-MNIST test slice.
        classifier, classifier_class, classifier_kwargs: the classifier
            (:func:`mimicfast.evaluate.inputs.load_classifier`); default the bundled CNN.
        checkpoint, config: the diffusion model, anything :func:`mimicfast.load` accepts; default the bundled UNet.
        preset: preset name(s), one defense each; ``steps`` and ``overrides`` (Preset fields) apply to all.
        defense: ``"purifier"``, ``"none"`` (the bare classifier) or both.
        attacks: names from ``clean`` and :data:`mimicfast.attacks.ATTACKS`.
        eps, norm, attack_steps, eot: the threat model and attack budget (``eot`` None: each attack's default;
            attacks on the bare classifier use 1).
        grad: ``"bpda"`` or ``"full"``: the purifier's gradient inside attacks through it.
        tau: temperature of ``grad="full"``'s ``tanh(u / tau)`` surrogate (default: the Purifier's).
        draws: defense draws per image (N of the protocols); the bare classifier is scored once.
        n: the first ``n`` images of the data (None: all).
        seed: the run seed; every per-image seed derives from it.
        batch_size: images per batch (fixed: sharding and resuming work on whole batches).
        device: ``cpu`` or ``cuda`` (under torchrun with NCCL each rank takes ``cuda:<LOCAL_RANK>``).
        threads: torch CPU threads per process (default: torch's).
        progress: tqdm bars over images and attack steps.
    """
    out = Path(out)
    presets_in = [preset] if isinstance(preset, str) else list(preset)
    attack_list = _split(attacks)
    defense_list = _split(defense)
    overrides = dict(overrides or {})
    _check_args(attack_list, defense_list, norm, grad, draws, batch_size, attack_steps, eot, n)
    if threads is not None:
        torch.set_num_threads(threads)
    rank, world = _init_distributed(device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    started = time.perf_counter()

    net, model_id = load_model(None if checkpoint is None else Path(checkpoint), config, device)
    presets = [resolve_preset(p, steps, overrides) for p in presets_in]
    denoiser = as_denoiser(net)
    channels, size = denoiser.channels or 3, denoiser.image_size
    x_all, y_all, data_id = load_data(None if data is None else Path(data), None if labels is None else Path(labels),
                                      channels, size, pad)
    if n is not None and not 1 <= n <= len(y_all):
        raise InputError(f"--n must be in [1, {len(y_all)}] for this data, got {n}")
    n = len(y_all) if n is None else n
    clf, classifier_id = load_classifier(None if classifier is None else Path(classifier), classifier_class,
                                         classifier_kwargs, device)

    defenses: list[tuple[str, Preset | None]] = [("none", None)] if "none" in defense_list else []
    if "purifier" in defense_list:
        defenses += [(defense_label(p, overrides), p) for p in presets]
    fixed = {"data": data_id, "classifier": classifier_id, "model": model_id, "steps": presets[0].steps,
             "overrides": overrides, "eps": eps, "norm": norm, "attack_steps": attack_steps, "eot": eot,
             "grad": grad, "tau": tau, "seed": seed, "batch_size": batch_size, "device": torch.device(device).type,
             "dtype": str(x_all.dtype)}
    extra = {"draws": draws, "n": n, "defenses": [d for d, _ in defenses],
             "attacks": _all_attack_labels(attack_list, grad, defenses),
             "presets": {d: dataclasses.asdict(p) if p else None for d, p in defenses},
             "world_size": world, "threads": torch.get_num_threads(), "torch": torch.__version__,
             "command": " ".join(sys.argv)}
    _settings_agreed(out, fixed, extra, rank, world)

    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    mine = [(b, idx) for b, idx in enumerate(batches) if b % world == rank]
    done = set(store.read_rows(out))
    rows_out = store.JsonlWriter(out / "rows" / f"rank-{rank}.jsonl")
    timing_out = store.JsonlWriter(out / "timing" / f"rank-{rank}.jsonl")
    total = sum(len(attacks_for(p is not None, attack_list)) for _, p in defenses) * sum(len(i) for _, i in mine)
    bar = tqdm(total=total, desc=f"eval rank {rank}/{world}" if world > 1 else "eval", unit="img",
               disable=not progress, position=rank if world > 1 else None, dynamic_ncols=True)
    for dlabel, p in defenses:
        scorer = None if p is None else Purifier(denoiser, preset=p)
        tau_kw = {} if tau is None else {"tau": tau}
        attacked = None if p is None else Purifier(denoiser, preset=p, grad=grad, seed=None, **tau_kw)
        n_draws = 1 if p is None else draws
        for attack in attacks_for(p is not None, attack_list):
            alabel = attack_label(attack, p is not None, grad)
            for b, idx in mine:
                todo = {(i, d) for i in idx for d in range(n_draws) if (dlabel, alabel, i, d) not in done}
                if todo:
                    bar.set_postfix_str(f"{dlabel} / {alabel} / batch {b}")
                    x, y = x_all[idx].to(device), y_all[idx].to(device)
                    t0 = time.perf_counter()
                    x_adv = _adversarial(out, dlabel, alabel, attack, b, idx, x, y, clf, attacked, seed,
                                         dict(eps=eps, norm=norm, steps=attack_steps, eot=eot), progress)
                    t1 = time.perf_counter()
                    rows = _score(x, x_adv, y, idx, todo, n_draws, clf, scorer, seed, norm, dlabel, alabel)
                    rows_out.write(rows)
                    timing_out.write([{"defense": dlabel, "attack": alabel, "batch": b, "images": len(idx),
                                       "attack_s": round(t1 - t0, 3),
                                       "score_s": round(time.perf_counter() - t1, 3), "draws": n_draws}])
                bar.update(len(idx))
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary = summarize(out) if rank == 0 else None
    if rank == 0 and progress:
        print(f"{out}: {time.perf_counter() - started:.0f} s wall; summary in {out / 'summary.md'}", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


def attacks_for(defended: bool, attacks: list[str]) -> list[str]:
    """The attacks run against one defense: on the bare classifier ``pgd`` is ``transfer`` (PGD on the same
    model with the same seeds), so it runs once, as ``transfer``."""
    return [a for a in attacks if defended or a != "pgd" or "transfer" not in attacks]


def _split(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


def _all_attack_labels(attacks: list[str], grad: str, defenses: list) -> list[str]:
    labels: list[str] = []
    for _, p in defenses:
        new = (attack_label(a, p is not None, grad) for a in attacks_for(p is not None, attacks))
        labels += [a for a in new if a not in labels]
    return labels


def _check_args(attacks: list[str], defenses: list[str], norm: str, grad: str, draws: int, batch_size: int,
                attack_steps: int, eot: int | None, n: int | None) -> None:
    unknown = [a for a in attacks if a not in ATTACK_NAMES]
    if unknown or not attacks:
        raise InputError(f"unknown attack(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ATTACK_NAMES)}")
    if not defenses or any(d not in ("none", "purifier") for d in defenses):
        raise InputError(f"--defense takes 'purifier', 'none' or both, got {','.join(defenses)!r}")
    if norm not in ("Linf", "L2"):
        raise InputError(f"--norm must be Linf or L2, got {norm!r}")
    if grad not in ("bpda", "full"):
        raise InputError(f"--grad must be bpda or full, got {grad!r}")
    for name, value in (("--draws", draws), ("--batch-size", batch_size), ("--attack-steps", attack_steps),
                        ("--eot", 1 if eot is None else eot), ("--n", 1 if n is None else n)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")


def _init_distributed(device: str) -> tuple[int, int]:
    """``(rank, world size)``; joins the torchrun process group (gloo on the CPU, NCCL on CUDA) when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        # Ranks wait for each other only at the settings check and at the end, which can be days apart.
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(days=30))
    return dist.get_rank(), dist.get_world_size()


def _settings_agreed(out: Path, fixed: dict, extra: dict, rank: int, world: int) -> None:
    """Rank 0 checks/writes settings.json; every rank learns whether it may go on."""
    error = None
    if rank == 0:
        try:
            store.check_settings(out, fixed, extra)
        except InputError as exc:
            error = str(exc)
    if world > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise InputError(error)


def _adversarial(out: Path, dlabel: str, alabel: str, attack: str, batch: int, idx: list[int], x: torch.Tensor,
                 y: torch.Tensor, clf: nn.Module, attacked: nn.Module | None, seed: int, budget: dict,
                 progress: bool) -> torch.Tensor:
    """The batch's adversarial examples: loaded when saved by an earlier run, else made and saved."""
    if attack == CLEAN:
        return x
    path = store.adv_path(out, dlabel, alabel, batch)
    saved = store.load_adv(path, idx)
    if saved is not None:
        return saved.to(x.device)
    through_purifier = attacked is not None and attack != "transfer"
    model = DefendedModel(attacked, clf, seed, idx) if through_purifier else clf
    kwargs = {k: v for k, v in budget.items() if v is not None}
    if not through_purifier:
        kwargs["eot"] = 1  # the bare classifier is deterministic
    x_adv = ATTACKS[attack](model, x, y, seeds=image_seeds(seed, idx, "attack"), progress=progress, **kwargs)
    store.save_adv(path, idx, x_adv)
    return x_adv.detach()


@torch.no_grad()
def _score(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, idx: list[int], todo: set[tuple[int, int]],
           n_draws: int, clf: nn.Module, scorer: nn.Module | None, seed: int, norm: str, dlabel: str,
           alabel: str) -> list[dict]:
    """Rows for the (image, draw) pairs in ``todo``; each needed draw classifies the whole batch (fixed batches
    keep results independent of which images were already done)."""
    delta = (x_adv - x).flatten(1)
    dist = (delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)).tolist()
    rows = []
    for d in range(n_draws):
        if not any((i, d) in todo for i in idx):
            continue
        purified = x_adv if scorer is None else scorer(x_adv, seed=image_seeds(seed, idx, "defense", d))
        preds = clf(purified).argmax(1).tolist()
        rows += [{"defense": dlabel, "attack": alabel, "index": i, "draw": d, "label": int(y[k]),
                  "pred": int(preds[k]), "dist": round(dist[k], 6)}
                 for k, i in enumerate(idx) if (i, d) in todo]
    return rows

