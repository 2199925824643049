"""Is an attack converged? The same run at budget k and 2k, compared figure by figure.

Two results folders qualify when their identities differ only in ``attack_steps`` and the second's is twice the
first's. Every (defense, attack, protocol) figure present in both is compared over the images both folders have
finished for that defense (so a 2k run still in progress is compared on what it has done); a row whose
figures move by more than ``tolerance`` points between k and 2k is labelled ``"not converged, upper bound"``, else
``"moved <= 2 points"`` (a row that is stable at 2k is still an upper bound on robust accuracy: no attack proves a
lower one). Attacks are matched by their label with the iteration count taken out (``"pgd (full, 20 it, EOT 1)"``
at k against ``"pgd (full, 40 it, EOT 1)"`` at 2k).
"""

from __future__ import annotations

import re
from pathlib import Path

from mimicfast.errors import InputError
from mimicfast.evaluate.protocols import PROTOCOLS
from mimicfast.evaluate.rows import RowKey, read_rows
from mimicfast.evaluate.spec import CLEAN, first_difference
from mimicfast.evaluate.store import read_settings
from mimicfast.evaluate.summary import PROTOCOL_TITLES, draws_needed, summarize_rows

#: Largest move, in accuracy points, of a figure between budget k and 2k that still counts as converged.
TOLERANCE = 2.0
NOT_CONVERGED = "not converged, upper bound"
_ITERATIONS = re.compile(r"\b\d+ it\b")


def convergence(k_dir: Path, k2_dir: Path, tolerance: float = TOLERANCE) -> list[dict]:
    """Rows ``{"defense", "attack", "images", "k", "2k", "verdict"}`` (``k``/``2k``: protocol -> accuracy in %),
    in the k folder's order, for every figure both folders hold over the same images.

    Raises:
        InputError: the folders are not one run at budgets k and 2k (naming the difference).
    """
    settings = [read_settings(Path(k_dir)), read_settings(Path(k2_dir))]
    a, b = settings[0]["identity"], settings[1]["identity"]
    diff = first_difference(a, {**b, "attack_steps": a["attack_steps"]})
    if diff is not None:
        raise InputError(f"{k_dir} and {k2_dir} are not one run at two budgets ({diff})")
    if b["attack_steps"] != 2 * a["attack_steps"]:
        raise InputError(f"{k2_dir} has {b['attack_steps']} attack steps, not twice the {a['attack_steps']} of "
                         f"{k_dir}")
    found = [read_rows(Path(folder), s)[0] for folder, s in zip((k_dir, k2_dir), settings, strict=True)]
    both = _finished(found[0], settings[0]) & _finished(found[1], settings[1])
    first, second = (summarize_rows({key: r for key, r in rows.items() if (key[0], key[3]) in both}, s)
                     for rows, s in zip(found, settings, strict=True))
    later = {_key(r): r for r in second}
    table: dict[tuple[str, str], dict] = {}
    for r in first:
        other = later.get(_key(r))
        if other is None or other["n"] != r["n"] or not r["n"]:
            continue
        row = table.setdefault((r["defense"], _ITERATIONS.sub(f"{a['attack_steps']}/{b['attack_steps']} it",
                                                                   r["attack"])),
                               {"images": r["n"], "k": {}, "2k": {}})
        row["k"][r["protocol"]] = round(100 * r["accuracy"], 1)
        row["2k"][r["protocol"]] = round(100 * other["accuracy"], 1)
    out = []
    for (defense, attack), row in table.items():
        moved = max(abs(row["k"][p] - row["2k"][p]) for p in row["k"])
        verdict = NOT_CONVERGED if moved > tolerance else f"moved <= {tolerance:g} points"
        out.append({"defense": defense, "attack": attack, **row, "verdict": "no attack" if attack == CLEAN else verdict})
    return out


def format_convergence(rows: list[dict], draws: int) -> str:
    """The k / 2k table (Markdown), accuracy in %."""
    protocols = [p for p in PROTOCOLS if any(p in r["k"] for r in rows)]
    titles = [f"{PROTOCOL_TITLES[p].format(N=draws)}: k / 2k" for p in protocols]
    lines = ["| defense | attack | images | " + " | ".join(titles) + " | verdict |",
             "|---|---|---|" + "---|" * len(protocols) + "---|"]
    for r in rows:
        cells = [f"{r['k'][p]:.1f} / {r['2k'][p]:.1f}" if p in r["k"] else "-" for p in protocols]
        lines.append(f"| {r['defense']} | {r['attack']} | {r['images']} | " + " | ".join(cells)
                     + f" | {r['verdict']} |")
    return "\n".join(lines)


def _finished(rows: dict[RowKey, dict], settings: dict) -> set[tuple[str, int]]:
    """The (defense, image) pairs whose every attack has all its scoring draws (and, through a purifier, all its
    choice draws) written: the images on which a folder's figures for that defense are final."""
    seen: dict[tuple[str, str, str, int], set[int]] = {}
    for defense, attack, role, index, draw in rows:
        seen.setdefault((defense, attack, role, index), set()).add(draw)
    done = set()
    for defense, attacks in settings["runs"].items():
        need = draws_needed(defense, settings)
        images = {index for (d, _, _, index) in seen if d == defense}
        done |= {(defense, i) for i in images
                 if all(set(range(n)) <= seen.get((defense, a, role, i), set())
                        for a in attacks for role, n in need.items())}
    return done


def _key(row: dict) -> tuple[str, str, str]:
    return row["defense"], _ITERATIONS.sub("k it", row["attack"]), row["protocol"]
