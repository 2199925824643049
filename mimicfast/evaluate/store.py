"""The on-disk state of an evaluation run, built to survive being killed at any moment.

Layout of ``--out DIR``::

    settings.json            everything that determines a row (a rerun with other settings is refused)
    rows/rank-<r>.jsonl      one JSON row per (defense, attack, image, defense draw), appended + fsync per batch
    adv/<defense>/<attack>/batch-<b>.pt   the batch's adversarial examples {"indices", "x_adv"}
    timing/rank-<r>.jsonl    seconds spent per (defense, attack, batch)
    rows.jsonl, summary.json, summary.md   written at the end (and by ``--summarize``)

A row is ``{"defense", "attack", "index", "draw", "label", "pred", "dist"}`` (``dist``: the perturbation's size
in the run's norm). The number of defense draws, the number of images and the lists of defenses and attacks are
not part of the settings: a rerun may add draws (scored from the saved adversarial examples, without attacking
again), images, defenses or attacks to the same folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from mimicfast.atomic import save_torch, write_text
from mimicfast.errors import InputError

SETTINGS = "settings.json"
RowKey = tuple[str, str, int, int]  # (defense, attack, index, draw)


def row_key(row: dict) -> RowKey:
    return row["defense"], row["attack"], int(row["index"]), int(row["draw"])


def slug(name: str) -> str:
    """A file-name-safe form of a defense or attack label."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


def check_settings(out: Path, fixed: dict, extra: dict) -> None:
    """Write ``settings.json`` (``fixed`` + ``extra``) or refuse when ``out`` holds rows of other ``fixed`` settings.

    ``extra`` (draws, n, the last command, ...) is updated on every run; ``fixed`` must match exactly.
    """
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())["fixed"]
        new = json.loads(json.dumps(fixed))
        # A setting absent from an older folder reads as None (its default then).
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            raise InputError(f"{out} holds results of other settings ({shown}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"fixed": fixed, **extra}, indent=2) + "\n")


def read_settings(out: Path) -> dict:
    path = out / SETTINGS
    if not path.is_file():
        raise InputError(f"{out} is not an evaluation folder (no {SETTINGS})")
    return json.loads(path.read_text())


def read_jsonl(paths: Iterable[Path]) -> list[dict]:
    """Every complete JSON line of ``paths`` (a line cut short by a kill is skipped)."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_rows(out: Path) -> dict[RowKey, dict]:
    """All rows written so far by any rank, one per key (the first written wins)."""
    rows: dict[RowKey, dict] = {}
    for row in read_jsonl(sorted((out / "rows").glob("rank-*.jsonl"))):
        rows.setdefault(row_key(row), row)
    return rows


class JsonlWriter:
    """Appends JSON lines to one file; each :meth:`write` ends with an fsync, so a kill loses at most that call."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            # A kill mid-line leaves a partial last line: drop it so the next row starts on a line of its own.
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self.path = path

    def write(self, rows: Iterable[dict]) -> None:
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def adv_path(out: Path, defense: str, attack: str, batch: int) -> Path:
    return out / "adv" / slug(defense) / slug(attack) / f"batch-{batch:05d}.pt"


def save_adv(path: Path, indices: list[int], x_adv: torch.Tensor) -> None:
    """Save a batch's adversarial examples atomically (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch({"indices": indices, "x_adv": x_adv.detach().cpu()}, path)


def load_adv(path: Path, indices: list[int]) -> torch.Tensor | None:
    """The saved adversarial examples of a batch, or None if absent or saved for other images."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved["x_adv"] if list(saved["indices"]) == list(indices) else None
