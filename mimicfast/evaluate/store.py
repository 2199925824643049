"""The on-disk state of an evaluation run, built to survive being killed at any moment and to refuse tampering.

Layout of ``--out DIR``::

    settings.json            the run identity (spec id + identity), the defenses and attacks run, the labels
    rows/rank-<r>.jsonl      one row per (defense, attack, role, image, draw), with a running digest
                             (:mod:`mimicfast.evaluate.rows`); rows/rank-<r>.head.json: its row count and digest
    adv/<defense>/<attack>/batch-<b>.pt   the batch's adversarial examples {"spec", "indices", "x_adv"}
    timing/rank-<r>.jsonl    seconds spent per (defense, attack, batch)
    rows.jsonl, summary.json, summary.md   written at the end (and by ``--summarize``)

A folder holds the results of one spec id (:mod:`mimicfast.evaluate.spec`): a rerun with another identity is
refused, naming the first difference. A rerun may add defenses, attacks, images and scoring or choice draws.
Saved adversarial examples are checked on load (their spec, images, shape, dtype, finite, in [0, 1], within eps
of the clean image) and recomputed, with a note, when they fail.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from mimicfast.atomic import save_torch, write_atomic, write_text
from mimicfast.errors import CheckpointError, InputError
from mimicfast.evaluate.spec import IDENTITY, RunSpec, first_difference, preset_record, spec_id_of
from mimicfast.safe_read import MAX_CHECKPOINT_BYTES, one_line, open_regular, read_json, read_torch

SETTINGS = "settings.json"
FORMAT = 2
_TIMING_FIELDS = ("attack_s", "score_s")


def slug(name: str) -> str:
    """A file-name-safe form of a defense or attack label."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


def has_results(out: Path) -> bool:
    """Whether ``out`` holds rows or adversarial examples (a folder with only settings holds nothing yet)."""
    return any(p.is_file() and p.stat().st_size for p in (out / "rows").glob("*.jsonl")) or \
        any((out / "adv").rglob("*.pt"))


def read_settings(out: Path) -> dict:
    """The checked settings.json of folder ``out``.

    Raises:
        InputError: no settings.json, or one that is damaged or edited (the message names the file and what to do).
    """
    path = out / SETTINGS
    if not path.exists():
        raise InputError(f"{out} is not an evaluation folder (no {SETTINGS})")
    fix = "it cannot be trusted: rerun into a new --out (or delete the folder)"
    try:
        settings = read_json(path)
    except CheckpointError as exc:
        raise InputError(f"{path} is damaged ({exc}); {fix}") from None
    problem = _settings_problem(settings)
    if problem is not None:
        raise InputError(f"{path} is damaged ({problem}); {fix}")
    if spec_id_of(settings["identity"]) != settings["spec_id"]:
        raise InputError(f"{path} was edited (its spec id does not match its identity); {fix}")
    return settings


def _settings_problem(s: object) -> str | None:
    if not isinstance(s, dict):
        return f"a JSON {type(s).__name__}, not an object"
    if s.get("format") != FORMAT:
        return f"format {s.get('format')!r}, this version reads format {FORMAT}"
    kinds = {"spec_id": str, "identity": dict, "presets": dict, "runs": dict, "labels": list, "classes": int,
             "draws": int, "choice_draws": int, "draws_written": int, "choice_draws_written": int}
    for key, kind in kinds.items():
        if type(s.get(key)) is not kind:
            return f"{key!r} missing or not a {kind.__name__}"
    if set(s["identity"]) != set(IDENTITY):
        return "the identity does not have the run's fields"
    if not all(type(v) is int and 0 <= v < s["classes"] for v in s["labels"]):
        return "labels that are not classes"
    if not all(isinstance(a, list) and all(isinstance(x, str) for x in a) for a in s["runs"].values()):
        return "'runs' is not a list of attacks per defense"
    if min(s["draws"], s["choice_draws"]) < 1 or s["draws"] > s["draws_written"] or \
            s["choice_draws"] > s["choice_draws_written"]:
        return "draw counts out of range"
    return None


def merge_settings(out: Path, spec: RunSpec, command: str, world: int) -> dict:
    """The settings this run writes: the folder's, with this run's defenses, attacks, draws and images added.

    Raises:
        InputError: the folder holds results of another identity (naming the first difference), a defense label
            whose settings differ, or other labels for the same images.
    """
    old = read_settings(out) if (out / SETTINGS).exists() and has_results(out) else None
    if old is not None:
        diff = first_difference(old["identity"], spec.identity)
        if diff is not None:
            raise InputError(f"{out} holds results of another run ({diff}); choose another --out")
    labels = spec.inputs.y[: spec.n].tolist()
    settings = old or {"format": FORMAT, "spec_id": spec.spec_id, "identity": spec.identity, "presets": {},
                       "runs": {}, "labels": [], "classes": spec.inputs.classes, "draws_written": 0,
                       "choice_draws_written": 0}
    common = min(len(labels), len(settings["labels"]))
    if labels[:common] != settings["labels"][:common] or settings["classes"] != spec.inputs.classes:
        raise InputError(f"{out} holds results for other labels or classes; choose another --out")
    settings["labels"] = max(labels, settings["labels"], key=len)
    for label, preset in spec.defenses:
        record = None if preset is None else preset_record(preset)
        if settings["presets"].setdefault(label, record) != record:
            raise InputError(f"{out}: defense {label!r} was run with other settings; choose another --out")
        run = settings["runs"].setdefault(label, [])
        run += [a for a in (spec.attack_label(a, preset) for a in spec.attacks_for(preset)) if a not in run]
    settings.update(draws=spec.draws, choice_draws=spec.choice_draws,
                    draws_written=max(settings["draws_written"], spec.draws),
                    choice_draws_written=max(settings["choice_draws_written"], spec.choice_draws),
                    last_run={"command": command, "threads": torch.get_num_threads(), "world_size": world,
                              "device": spec.device})
    return settings


def write_settings(out: Path, settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / SETTINGS, json.dumps(settings, indent=1) + "\n")


def adv_path(out: Path, defense: str, attack: str, batch: int) -> Path:
    return out / "adv" / slug(defense) / slug(attack) / f"batch-{batch:05d}.pt"


def save_adv(path: Path, spec_id: str, indices: list[int], x_adv: torch.Tensor) -> None:
    """Save a batch's adversarial examples atomically (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch({"spec": spec_id, "indices": list(indices), "x_adv": x_adv.detach().cpu()}, path)


def load_adv(path: Path, spec_id: str, indices: list[int], x: torch.Tensor, eps: float,
             norm: str) -> tuple[torch.Tensor | None, str | None]:
    """``(saved adversarial examples of the batch, None)``, or ``(None, why not)`` when absent (no note) or
    unusable: another spec or images, not a tensor like ``x``, non-finite, outside [0, 1] or farther than eps
    from ``x`` in ``norm``."""
    if not path.exists():
        return None, None
    try:
        with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES, what="adversarial examples") as f:
            saved = read_torch(f)
    except Exception as exc:  # noqa: BLE001 -- any failure to read a saved batch means: recompute it
        return None, f"{path}: unreadable ({one_line(exc)}); recomputed"
    x_cpu = x.detach().cpu()
    problem = None
    if not isinstance(saved, dict) or saved.get("spec") != spec_id or saved.get("indices") != list(indices):
        problem = "saved by another run or for other images"
    elif not isinstance(saved.get("x_adv"), torch.Tensor):
        problem = "no tensor x_adv"
    else:
        x_adv = saved["x_adv"]
        if x_adv.shape != x_cpu.shape or x_adv.dtype != x_cpu.dtype:
            problem = f"{x_adv.dtype} {list(x_adv.shape)}, expected {x_cpu.dtype} {list(x_cpu.shape)}"
        elif not bool(torch.isfinite(x_adv).all()) or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
            problem = "values outside [0, 1] or not finite"
        else:
            far = float(distances(x_cpu, x_adv, norm).max())
            if far > eps * (1 + 1e-5) + 1e-6:
                problem = f"{far:.6g} away from the clean image in {norm}, more than eps {eps:g}"
            else:
                return x_adv, None
    return None, f"{path}: {problem}; recomputed"


def distances(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image size of ``x_adv - x`` in ``norm`` (``Linf`` or ``L2``), in float64."""
    delta = (x_adv.double() - x.double()).flatten(1)
    return delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)


def read_timing(out: Path) -> list[dict]:
    """Every timing row of the folder (a last line cut by a kill is skipped).

    Raises:
        InputError: a damaged timing file (naming it and what to do).
    """
    rows = []
    for path in sorted((out / "timing").glob("rank-*.jsonl")):
        with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES, what="timing file") as f:
            lines = f.read().split(b"\n")[:-1]
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and all(
                    isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                    and math.isfinite(row[k]) and row[k] >= 0 for k in _TIMING_FIELDS)
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"{path} line {number} is damaged (not a timing row with {' and '.join(_TIMING_FIELDS)}"
                                 f"); it holds only timings: delete {path} and rerun")
            rows.append(row)
    return rows


class TimingWriter:
    """Appends timing rows to ``timing/rank-<rank>.jsonl``; opening drops a last line cut by a kill."""

    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / "timing" / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with open_regular(self.path, max_bytes=MAX_CHECKPOINT_BYTES, what="timing file") as f:
                data = f.read()
            if not data.endswith(b"\n") and data:
                kept = data[: data.rfind(b"\n") + 1]
                write_atomic(self.path, lambda f: f.write(kept))

    def write(self, row: dict) -> None:
        # An append (timings are informative; a torn last line is skipped on read and dropped on the next open).
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
