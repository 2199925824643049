"""The rows of an evaluation folder: appended with a running digest, read back checked.

``rows/rank-<r>.jsonl`` holds one JSON row per line::

    {"spec", "defense", "attack", "role", "index", "draw", "label", "pred", "p_true", "dist", "chain"}

``role`` is ``"score"`` (a scoring draw: what the protocols count) or ``"choice"`` (an attack-side draw: what the
attacker sees when it picks its single submission); ``p_true`` is the classifier's probability of the true label
and ``dist`` the perturbation's size in the run's norm. ``chain`` is a running digest: SHA-256 of the previous
row's chain and this row, starting from the spec id and the file's name, so an edited, removed or inserted row
breaks the chain from that line on. ``rows/rank-<r>.head.json`` records the number of rows and the last chain
after every batch, so rows cut from the end are noticed too.

Reading (:func:`read_rows`) counts only rows that are on an unbroken chain and valid for the folder's settings
(spec id, defense and attack run, image index, label, draw, predicted class, distance within eps); everything
else is left out with a note naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mimicfast.atomic import remove_unfinished_writes, write_atomic, write_text
from mimicfast.errors import CheckpointError
from mimicfast.safe_read import MAX_CHECKPOINT_BYTES, MAX_CONFIG_BYTES, open_regular

ROLES = ("score", "choice")
RowKey = tuple[str, str, str, int, int]  # (defense, attack, role, index, draw)
ROWS_FILE = re.compile(r"rank-(0|[1-9][0-9]{0,5})\.jsonl")
HEAD_FILE = re.compile(r"rank-(0|[1-9][0-9]{0,5})\.head\.json")
_FIELDS = {"spec": str, "defense": str, "attack": str, "role": str, "index": int, "draw": int, "label": int,
           "pred": int, "p_true": float, "dist": float, "chain": str}
_DIST_SLACK = 1e-5  # relative + absolute tolerance of a saved distance against eps (rounding to 6 digits)


def row_key(row: dict) -> RowKey:
    return row["defense"], row["attack"], row["role"], row["index"], row["draw"]


def rows_path(out: Path, rank: int) -> Path:
    return out / "rows" / f"rank-{rank}.jsonl"


def _head_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".head.json")


def _chain(previous: str, row: dict) -> str:
    body = json.dumps({k: v for k, v in row.items() if k != "chain"}, sort_keys=True)
    return hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()[:16]


def _genesis(spec_id: str, path: Path) -> str:
    return f"{spec_id}:{path.name}"


@dataclass
class _File:
    """A rows file as read: the rows on the unbroken chain, where they end, the last chain and any notes."""

    rows: list[tuple[int, dict]] = field(default_factory=list)  # (line number, row)
    valid_bytes: int = 0
    chain: str = ""
    notes: list[str] = field(default_factory=list)


def _read_file(path: Path, spec_id: str, shown: str) -> _File:
    """The rows of one file up to the first line that breaks the running digest, checked against its head."""
    result = _File(chain=_genesis(spec_id, path))
    data = b""
    if path.exists():
        with open_regular(path, max_bytes=MAX_CHECKPOINT_BYTES, what="rows file") as f:
            data = f.read()
    lines = data.split(b"\n")[:-1]  # a last line without its newline was cut by a kill: not a row yet
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and row.get("chain") == _chain(result.chain, row)
        except ValueError:
            ok = False
        if not ok:
            result.notes.append(f"{shown} line {number}: a row was edited, removed or inserted here (the running "
                                f"digest breaks); its {len(lines) - number + 1} rows from there on are not counted")
            return result
        result.rows.append((number, row))
        result.valid_bytes += len(line) + 1
        result.chain = row["chain"]
    head = _read_head(_head_path(path))
    if head is None:
        if _head_path(path).exists():
            result.notes.append(f"{shown}: its digest record {_head_path(path).name} is damaged; rows cut from the "
                                f"end of the file would go unnoticed")
        return result
    count, chain = head
    if count > len(result.rows) or (count and result.rows[count - 1][1]["chain"] != chain):
        what = (f"ends after {len(result.rows)} rows but {count} were written" if count > len(result.rows)
                else "does not match its digest record")
        result.notes.append(f"{shown} {what} (rows removed or rewritten); none of its rows are counted")
        return _File(chain=_genesis(spec_id, path), notes=result.notes)
    return result


def _read_head(path: Path) -> tuple[int, str] | None:
    try:
        with open_regular(path, max_bytes=MAX_CONFIG_BYTES, what="rows digest record") as f:
            head = json.loads(f.read())
    except (FileNotFoundError, CheckpointError, ValueError):
        return None
    if (not isinstance(head, dict) or type(head.get("rows")) is not int or head["rows"] < 0
            or not isinstance(head.get("chain"), str)):
        return None
    return head["rows"], head["chain"]


class RowsWriter:
    """Appends rows to ``rows/rank-<rank>.jsonl``, continuing its running digest.

    Opening drops whatever follows the file's last good row (a line cut by a kill, or rows after a break in the
    chain: they are recomputed) and the temporary files of this rank's interrupted atomic writes. Each
    :meth:`write` appends and fsyncs the rows, then records the new row count and chain in the head file, so a
    kill loses at most that call's rows.
    """

    def __init__(self, out: Path, rank: int, spec_id: str) -> None:
        self.path = rows_path(out, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for own in (self.path, _head_path(self.path)):  # a kill mid-write leaves a temporary file; this rank owns it
            remove_unfinished_writes(own)
        self.spec_id = spec_id
        read = _read_file(self.path, spec_id, self.path.name)
        self.count, self.chain = len(read.rows), read.chain
        if self.path.is_file() and self.path.stat().st_size != read.valid_bytes:
            kept = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for _, r in read.rows)
            write_atomic(self.path, lambda f: f.write(kept))
            self._write_head()

    def write(self, rows: list[dict]) -> None:
        """Append ``rows`` (without ``spec`` and ``chain``: both are added here)."""
        lines = []
        for row in rows:
            row = {**row, "spec": self.spec_id}
            row["chain"] = self.chain = _chain(self.chain, row)
            lines.append(json.dumps(row, sort_keys=True) + "\n")
        # An append, not write_atomic: the rows file is a log that grows by one batch at a time; the head file
        # (written atomically) says how much of it was completed.
        with open(self.path, "a") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        self.count += len(rows)
        self._write_head()

    def _write_head(self) -> None:
        write_text(_head_path(self.path), json.dumps({"rows": self.count, "chain": self.chain}) + "\n")


def read_rows(out: Path, settings: dict) -> tuple[dict[RowKey, dict], list[str]]:
    """The valid rows of every rank of folder ``out`` (keyed by :func:`row_key`; the first written wins) and a
    note for each file, line or row left out. ``settings`` is the folder's checked settings.json."""
    rows: dict[RowKey, dict] = {}
    notes: list[str] = []
    folder = out / "rows"
    paths = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in paths:
        shown = f"{out.name}/rows/{path.name}"
        if HEAD_FILE.fullmatch(path.name):
            rows_file = path.with_name(path.name.removesuffix(".head.json") + ".jsonl")
            if not rows_file.exists():  # the whole rows file was removed
                notes += _read_file(rows_file, settings["spec_id"], f"{out.name}/rows/{rows_file.name}").notes
            continue
        if not ROWS_FILE.fullmatch(path.name):
            notes.append(f"{shown} is not a rows file of this folder (rank-<r>.jsonl); ignored")
            continue
        read = _read_file(path, settings["spec_id"], shown)
        notes += read.notes
        bad: dict[str, list[int]] = {}
        for number, row in read.rows:
            problem = row_problem(row, settings)
            if problem is None and rows.setdefault(row_key(row), row)["pred"] != row["pred"]:
                problem = "a second row for the same image and draw with another prediction"
            if problem is not None:
                bad.setdefault(problem, []).append(number)
        for problem, numbers in bad.items():
            shown_lines = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
            notes.append(f"{shown} line(s) {shown_lines}: {problem}; not counted")
    return rows, notes


def row_problem(row: dict, settings: dict) -> str | None:
    """Why ``row`` cannot be counted in a folder with ``settings``, or None."""
    for name, kind in _FIELDS.items():
        value = row.get(name)
        ok = (type(value) is int) if kind is int else isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            return f"field {name!r} missing or not a{'n integer' if kind is int else ' ' + kind.__name__}"
    if row["spec"] != settings["spec_id"]:
        return f"a row of another run (spec {row['spec']})"
    if row["attack"] not in settings["runs"].get(row["defense"], ()):
        return f"a row of {row['defense']} / {row['attack']}, which this folder never ran"
    if row["role"] not in ROLES:
        return f"unknown role {row['role']!r}"
    labels = settings["labels"]
    if not 0 <= row["index"] < len(labels):
        return f"image index {row['index']} outside the folder's {len(labels)} images"
    if row["label"] != labels[row["index"]]:
        return f"label {row['label']} of image {row['index']} is not the data's ({labels[row['index']]})"
    most = settings["draws_written"] if row["role"] == "score" else settings["choice_draws_written"]
    if not 0 <= row["draw"] < (1 if row["defense"] == "none" else most):
        return f"draw {row['draw']} outside the draws run"
    if not 0 <= row["pred"] < settings["classes"]:
        return f"prediction {row['pred']} is not one of the classifier's {settings['classes']} classes"
    if not 0 <= row["p_true"] <= 1:
        return f"probability {row['p_true']} outside [0, 1]"
    eps = settings["identity"]["eps"]
    if not 0 <= row["dist"] <= eps * (1 + _DIST_SLACK) + _DIST_SLACK:
        return f"perturbation size {row['dist']} outside the threat model (eps {eps})"
    return None
