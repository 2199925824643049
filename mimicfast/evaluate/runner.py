"""``mimicfast.evaluate.run``: robust accuracy of a classifier behind MimicDiffusion, resumable and shardable.

For every defense of the spec (the bare classifier ``"none"``, or the purifier with a resolved preset), every
attack and every image: make the adversarial example (``clean`` makes none; ``transfer`` attacks the bare
classifier; every other attack goes through ``classifier(purifier(.))`` with gradients ``grad`` and fresh defense
draws per call, EOT), then classify ``purifier(x_adv)`` with N scoring draws and K attack-side choice draws and
write one row per draw (:mod:`mimicfast.evaluate.rows`). The protocols (own seed, worst of N, majority of N) and
the single submission per image are computed from the rows (:mod:`mimicfast.evaluate.summary`).

Work is cut into batches of ``batch_size`` consecutive images (batch b = images ``[b*B, (b+1)*B)``); under
``torchrun`` rank r takes batches ``r, r + W, ...``. Every image's seeds depend only on its dataset index
(:mod:`mimicfast.evaluate.seeds`) and every batch has the same members whatever the number of processes, so the
rows of a sharded run equal a single-process run's bit for bit (same device, dtype and threads per process).
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mimicfast.api import Purifier
from mimicfast.attacks import ATTACKS
from mimicfast.errors import InputError
from mimicfast.evaluate import store
from mimicfast.evaluate.inputs import check_logits
from mimicfast.evaluate.rows import RowsWriter, read_rows
from mimicfast.evaluate.seeds import DefendedModel, purpose_seeds
from mimicfast.evaluate.spec import CLEAN, RunSpec
from mimicfast.evaluate.summary import summarize
from mimicfast.sampling.denoisers import as_denoiser


def run(spec: RunSpec, out: str | Path) -> dict | None:
    """Evaluate ``spec`` into folder ``out`` (:mod:`mimicfast.evaluate.store`); returns the summary (on rank 0).

    ``spec`` comes from :func:`mimicfast.evaluate.build_spec`, which has checked everything, so a refused run
    writes nothing. ``out`` may already hold results of the same spec id: finished rows are kept, damaged or
    tampered ones are reported (stderr) and recomputed; results of another spec id are refused.
    """
    out = Path(out)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    rank, world = _init_distributed(spec.device)
    device = spec.device
    if world > 1 and spec.device_type == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    started = time.perf_counter()
    settings = _settings_agreed(out, spec, rank, world)
    existing, notes = read_rows(out, settings)
    if rank == 0:
        _note(notes)
    done = set(existing)
    x_all, y_all = spec.inputs.x, spec.inputs.y
    clf = spec.inputs.classifier.to(device)
    denoiser = as_denoiser(spec.inputs.net.to(device))

    batches = [list(range(s, min(s + spec.batch_size, spec.n))) for s in range(0, spec.n, spec.batch_size)]
    mine = [(b, idx) for b, idx in enumerate(batches) if b % world == rank]
    writer = RowsWriter(out, rank, spec.spec_id)
    timing = store.TimingWriter(out, rank)
    total = sum(len(spec.attacks_for(p)) for _, p in spec.defenses) * sum(len(i) for _, i in mine)
    bar = tqdm(total=total, desc=f"eval rank {rank}/{world}" if world > 1 else "eval", unit="img",
               disable=not spec.progress, position=rank if world > 1 else None, dynamic_ncols=True)
    for dlabel, preset in spec.defenses:
        scorer = None if preset is None else Purifier(denoiser, preset=preset)
        attacked = None if preset is None else Purifier(denoiser, preset=preset, grad=spec.grad, seed=None,
                                                        tau=spec.tau)
        draws = {"score": 1} if preset is None else {"score": spec.draws, "choice": spec.choice_draws}
        for attack in spec.attacks_for(preset):
            alabel = spec.attack_label(attack, preset)
            for b, idx in mine:
                todo = {(role, i, d) for role, count in draws.items() for i in idx for d in range(count)
                        if (dlabel, alabel, role, i, d) not in done}
                if todo:
                    bar.set_postfix_str(f"{dlabel} / {alabel} / batch {b}")
                    x, y = x_all[idx].to(device), y_all[idx].to(device)
                    t0 = time.perf_counter()
                    x_adv = _adversarial(out, spec, dlabel, alabel, attack, b, idx, x, y, clf, attacked)
                    t1 = time.perf_counter()
                    writer.write(_score(spec, x, x_adv, y, idx, todo, clf, scorer, dlabel, alabel))
                    timing.write({"defense": dlabel, "attack": alabel, "batch": b, "images": len(idx),
                                  "attack_s": round(t1 - t0, 3), "score_s": round(time.perf_counter() - t1, 3)})
                bar.update(len(idx))
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary = summarize(out) if rank == 0 else None
    if rank == 0 and spec.progress:
        print(f"{out}: {time.perf_counter() - started:.0f} s wall; summary in {out / 'summary.md'}", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


def _note(notes: list[str]) -> None:
    for line in notes:
        print(f"note: {line}", file=sys.stderr)


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


def _settings_agreed(out: Path, spec: RunSpec, rank: int, world: int) -> dict:
    """Rank 0 checks and writes settings.json; every rank gets the settings or the refusal."""
    box: list[object] = [None]
    if rank == 0:
        try:
            settings = store.merge_settings(out, spec, " ".join(sys.argv), world)
            store.write_settings(out, settings)
            box = [settings]
        except InputError as exc:
            box = [str(exc)]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], str):
        raise InputError(box[0])
    return box[0]


def _adversarial(out: Path, spec: RunSpec, dlabel: str, alabel: str, attack: str, batch: int, idx: list[int],
                 x: torch.Tensor, y: torch.Tensor, clf: nn.Module, attacked: nn.Module | None) -> torch.Tensor:
    """The batch's adversarial examples: loaded when an earlier run saved valid ones, else made and saved."""
    if attack == CLEAN:
        return x
    path = store.adv_path(out, dlabel, alabel, batch)
    saved, note = store.load_adv(path, spec.spec_id, idx, x, spec.eps, spec.norm)
    if note is not None:
        _note([note])
    if saved is not None:
        return saved.to(x.device)
    through_purifier = attacked is not None and attack != "transfer"
    model = DefendedModel(attacked, clf, spec.seed, idx) if through_purifier else clf
    kwargs = {"eps": spec.eps, "norm": spec.norm, "steps": spec.attack_steps}
    if not through_purifier:
        kwargs["eot"] = 1  # the bare classifier is deterministic
    elif spec.eot is not None:
        kwargs["eot"] = spec.eot
    x_adv = ATTACKS[attack](model, x, y, seeds=purpose_seeds(spec.seed, "attack", idx), progress=spec.progress,
                            **kwargs).detach()
    store.save_adv(path, spec.spec_id, idx, x_adv)
    return x_adv


@torch.no_grad()
def _score(spec: RunSpec, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, idx: list[int],
           todo: set[tuple[str, int, int]], clf: nn.Module, scorer: Purifier | None, dlabel: str,
           alabel: str) -> list[dict]:
    """Rows for the (role, image, draw) triples in ``todo``; each needed draw classifies the whole batch (fixed
    batches keep results independent of which images were already done). Scoring draws use the "defense" seeds,
    choice draws the disjoint "choice" seeds."""
    dist = store.distances(x, x_adv, spec.norm).tolist()
    rows = []
    for role, purpose in (("score", "defense"), ("choice", "choice")):
        for d in sorted({d for r, _, d in todo if r == role}):
            purified = x_adv if scorer is None else scorer(x_adv, seed=purpose_seeds(spec.seed, purpose, idx, d))
            logits = clf(purified)
            check_logits(logits, y, len(idx))
            probs = logits.double().softmax(1)
            preds = probs.argmax(1).tolist()
            p_true = probs.gather(1, y[:, None]).flatten().tolist()
            rows += [{"defense": dlabel, "attack": alabel, "role": role, "index": i, "draw": d, "label": int(y[k]),
                      "pred": int(preds[k]), "p_true": round(p_true[k], 6), "dist": round(dist[k], 6)}
                     for k, i in enumerate(idx) if (role, i, d) in todo]
    return rows

