"""``summary.json`` and ``summary.md`` of an evaluation folder: accuracy per (defense, attack, protocol).

``summary.json`` is ``{"rows": [{"defense", "attack", "protocol", "accuracy", "n", "ci95": [lo, hi]}],
"settings": {...}, "notes": [...]}``. An image counts in a protocol once all its N scoring draws are written
(N = the folder's ``draws``; 1 for the bare classifier), so a summary of a run still in progress covers the images
finished so far. Only rows that pass :func:`mimicfast.evaluate.rows.read_rows` count; ``notes`` says what was
left out and why.

Per purifier defense two rows combine the attacks:

* ``submission (choice draws)``: per image the attacker submits **one** input, chosen among the clean image and
  every attack's adversarial example by its own, attack-side draws (the ``choice`` rows: fewest correct
  classifications, then the lowest mean probability of the true class; ties go to the first attack run), never
  by the scoring draws; the submission is then scored on the N scoring draws.
* ``submission`` (the headline): the strongest single-submission strategy under each protocol: the lowest
  accuracy of the choice above and of every fixed strategy "always submit attack A's output" (clean included);
  the row's ``strategy`` names it. Picking the strongest of these few strategies after scoring favours the
  attacker slightly, so the headline stays an upper bound on robust accuracy.
* ``all attacks (per image)``: an image counts only if it counts under every attack, each judged on the scoring
  draws: a pessimistic bound that lets the attacker pick after seeing the defense's scoring draws.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from mimicfast.atomic import write_text
from mimicfast.errors import InputError
from mimicfast.evaluate.protocols import PROTOCOLS, image_correct, wilson_interval
from mimicfast.evaluate.rows import RowKey, read_rows
from mimicfast.evaluate.spec import first_difference
from mimicfast.evaluate.store import read_settings, read_timing

SUBMISSION = "submission"
CHOSEN = "submission (choice draws)"
ALL_ATTACKS = "all attacks (per image)"
PROTOCOL_TITLES = {"own": "own seed", "worst": "worst of {N}", "majority": "majority of {N}"}
MEANINGS = (
    "own seed: the image is classified right with the defense's first scoring draw (how a stochastic defense is "
    "usually reported).",
    "worst of {N}: right on all {N} scoring draws (an image counts only if no draw is fooled).",
    "majority of {N}: the true class gets strictly more of the {N} scoring draws than any other class.",
    f"{SUBMISSION}: the attacker submits one input per image; the headline is the strongest such strategy: "
    f"'{CHOSEN}' (chosen among the clean image and every attack's output on the attacker's own draws, disjoint "
    "from the scoring draws) or always submitting one attack's output, whichever leaves the lowest accuracy.",
    f"{ALL_ATTACKS}: an image counts only if it survives every attack on the scoring draws: a pessimistic bound "
    "(the attacker may pick after seeing the scoring draws).",
)


def draws_needed(defense: str, settings: dict) -> dict[str, int]:
    """Per role, the draws an image needs written before it counts for ``defense``: one scoring draw for the bare
    classifier; the folder's scoring and choice draws behind a purifier."""
    if defense == "none":
        return {"score": 1}
    return {"score": settings["draws"], "choice": settings["choice_draws"]}


def summarize_rows(rows: dict[RowKey, dict], settings: dict) -> list[dict]:
    """The summary rows of checked ``rows`` for a folder with ``settings`` (defenses and attacks in run order)."""
    choice = settings["choice_draws"]
    labels = settings["labels"]
    by: dict[tuple[str, str, str], dict[int, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for (defense, attack, role, index, draw), row in rows.items():
        by[defense, attack, role][index][draw] = row
    out = []
    for defense, attacks in settings["runs"].items():
        need = draws_needed(defense, settings)["score"]
        scored = {a: {i: [d[k]["pred"] for k in range(need)] for i, d in by[defense, a, "score"].items()
                      if all(k in d for k in range(need))} for a in attacks}
        table = dict(scored)
        if defense != "none":
            table = {CHOSEN: _submission(attacks, scored, by, defense, choice), **table}
        attacked = [a for a in attacks if a != "clean"]
        if len(attacked) >= 2:
            images = set.intersection(*(set(scored[a]) for a in attacked))
            table[ALL_ATTACKS] = {i: [scored[a][i] for a in attacked] for i in sorted(images)}
        found = [_row(defense, attack, protocol, _correct(per_image, labels, protocol, attack == ALL_ATTACKS),
                      len(per_image)) for attack, per_image in table.items() for protocol in PROTOCOLS]
        if defense != "none":
            # Strategies compete on the same images: those on which every candidate is finished (all of them once
            # the run is complete; fewer while it is in progress).
            common = table[CHOSEN]
            strategies = {CHOSEN: common, **{a: {i: scored[a][i] for i in common} for a in attacks}}
            found = [*_strongest_submission([_row(defense, a, protocol, _correct(per_image, labels, protocol),
                                                  len(per_image))
                                             for a, per_image in strategies.items() for protocol in PROTOCOLS]),
                     *found]
        out += found
    return out


def _correct(per_image: dict, labels: list[int], protocol: str, every_attack: bool = False) -> int:
    """Images counted right under ``protocol``: ``per_image`` maps an image to its predictions per draw, or, with
    ``every_attack``, to one such list per attack (right only if right under every attack)."""
    if every_attack:
        return sum(all(image_correct(p, labels[i], protocol) for p in per_attack)
                   for i, per_attack in per_image.items())
    return sum(image_correct(p, labels[i], protocol) for i, p in per_image.items())


def _row(defense: str, attack: str, protocol: str, correct: int, n: int) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {"defense": defense, "attack": attack, "protocol": protocol,
            "accuracy": correct / n if n else float("nan"), "n": n, "ci95": [lo, hi]}


def _strongest_submission(rows: list[dict]) -> list[dict]:
    """Per protocol, the :data:`SUBMISSION` row: the lowest accuracy among the single-submission strategies of
    ``rows`` (the choice on the attacker's draws first, so it wins ties, then every attack as run)."""
    out = []
    for protocol in PROTOCOLS:
        candidates = [r for r in rows if r["protocol"] == protocol and r["attack"] != ALL_ATTACKS and r["n"]]
        if candidates:
            best = min(candidates, key=lambda r: r["accuracy"])
            out.append({**best, "attack": SUBMISSION, "strategy": best["attack"]})
    return out


def _submission(attacks: list[str], scored: dict[str, dict[int, list[int]]], by: dict, defense: str,
                choice: int) -> dict[int, list[int]]:
    """Per image, the scoring predictions of the input the attacker submits (chosen on the choice draws only);
    images whose candidates are not all finished are left out."""
    chosen = {}
    images = set.intersection(*(set(scored[a]) for a in attacks)) if attacks else set()
    for i in sorted(images):
        seen = []
        for a in attacks:
            draws = by[defense, a, "choice"].get(i, {})
            if not all(k in draws for k in range(choice)):
                break
            rows = [draws[k] for k in range(choice)]
            seen.append((sum(r["pred"] == r["label"] for r in rows), sum(r["p_true"] for r in rows), a))
        else:
            best = min(seen, key=lambda s: s[:2])  # min keeps the first of equals: the first attack run
            chosen[i] = scored[best[2]][i]
    return chosen


def format_markdown(rows: list[dict], draws: int) -> str:
    """Two Markdown tables: the headline (per purifier defense: the single submission under every protocol, clean
    worst of N and the all-attacks bound), then one line per (defense, attack) with every protocol."""
    cells: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        cells[r["defense"], r["attack"]][r["protocol"]] = r
    worst = PROTOCOL_TITLES["worst"].format(N=draws)
    head = [PROTOCOL_TITLES[p].format(N=draws) for p in PROTOCOLS]
    lines = []
    if any(attack == SUBMISSION for _, attack in cells):
        lines += ["| defense | submission: " + " | submission: ".join(head) + f" | clean: {worst} | "
                  f"{ALL_ATTACKS}: {worst} |", "|---|" + "---|" * (len(head) + 2)]
        for (defense, attack), by_protocol in cells.items():
            if attack == SUBMISSION:
                extra = [cells.get((defense, a), {}).get("worst") for a in ("clean", ALL_ATTACKS)]
                chosen = [*map(by_protocol.get, PROTOCOLS), *extra]
                lines.append(f"| {defense} | " + " | ".join(_cell(c) for c in chosen) + " |")
        lines.append("")
    lines += ["| defense | attack | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for (defense, attack), by_protocol in cells.items():
        lines.append(f"| {defense} | {attack} | " + " | ".join(_cell(by_protocol[p]) for p in PROTOCOLS) + " |")
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    """``accuracy% [lo, hi] (n=...)``; a submission cell also names its strategy."""
    if r is None or not r["n"]:
        return "-"
    lo, hi = r["ci95"]
    by = f"; {r['strategy']}" if "strategy" in r else ""
    return f"{100 * r['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']}{by})"


def meanings(draws: int) -> str:
    """What each protocol and combined row means, as a Markdown list."""
    return "\n".join(f"* {m.format(N=draws)}" for m in MEANINGS)


def summarize(out: Path) -> dict:
    """Write ``rows.jsonl`` (the counted rows of all ranks, sorted), ``summary.json`` and ``summary.md`` into
    ``out``; return the summary."""
    settings = read_settings(out)
    rows, notes = read_rows(out, settings)
    ordered = sorted(rows.values(), key=lambda r: (r["defense"], r["attack"], r["role"], r["index"], r["draw"]))
    write_text(out / "rows.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    summary = {"rows": summarize_rows(rows, settings), "settings": settings, "notes": notes}
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    seconds = sum(t["attack_s"] + t["score_s"] for t in read_timing(out))
    write_text(out / "summary.md", f"# Evaluation: {out}\n\n{report(summary)}\n\nCompute: {seconds:.0f} s summed "
                                   f"over batches and processes.\n")
    return summary


def report(summary: dict) -> str:
    """The tables, what the protocols mean, the settings as a list and any notes (Markdown)."""
    s = summary["settings"]
    draws = s["draws"]
    settings = [f"* spec id `{s['spec_id']}`", *(f"* {k}: `{v}`" for k, v in s["identity"].items()),
                f"* scoring draws N = {draws}; attack-side choice draws = {s['choice_draws']}; images: "
                f"{len(s['labels'])}; classes: {s['classes']}",
                *(f"* defense `{label}`: " + ("the bare classifier" if p is None else
                                               ", ".join(f"{k}={v}" for k, v in p.items()))
                  for label, p in s["presets"].items()),
                *(f"* attacks on `{d}`: {', '.join(a)}" for d, a in s["runs"].items())]
    text = (f"{format_markdown(summary['rows'], draws)}\n\nAccuracy [95% Wilson interval] (images).\n\n"
            f"{meanings(draws)}\n\nSettings:\n\n" + "\n".join(settings))
    if summary["notes"]:
        text += "\n\nNotes (rows left out):\n\n" + "\n".join(f"* {n}" for n in summary["notes"])
    return text


def combined(folders: list[Path]) -> dict:
    """The summary of several folders of one spec id, their rows pooled (not written anywhere).

    Raises:
        InputError: the folders hold different runs (naming the first difference) or disagree on a defense.
    """
    settings = [read_settings(f) for f in folders]
    first = settings[0]
    for folder, s in zip(folders[1:], settings[1:], strict=True):
        diff = first_difference(first["identity"], s["identity"])
        if diff is not None:
            raise InputError(f"{folders[0]} and {folder} hold different runs ({diff}); summarize them separately")
    merged = {**first, "runs": {}, "presets": {}}
    for s in settings:
        for label, record in s["presets"].items():
            if merged["presets"].setdefault(label, record) != record:
                raise InputError(f"defense {label!r} has other settings in another folder; summarize separately")
        for d, attacks in s["runs"].items():
            merged["runs"].setdefault(d, []).extend(a for a in attacks if a not in merged["runs"][d])
    merged["labels"] = max((s["labels"] for s in settings), key=len)
    merged["draws"] = min(s["draws"] for s in settings)
    merged["choice_draws"] = min(s["choice_draws"] for s in settings)
    rows: dict[RowKey, dict] = {}
    notes: list[str] = []
    for folder in folders:
        found, more = read_rows(folder, {**merged, "draws_written": max(s["draws_written"] for s in settings),
                                         "choice_draws_written": max(s["choice_draws_written"] for s in settings)})
        notes += more
        clashes = Counter(k for k, r in found.items() if rows.setdefault(k, r)["pred"] != r["pred"])
        if clashes:
            notes.append(f"{folder}: {sum(clashes.values())} rows disagree with another folder's; the first "
                         f"folder's are counted")
    return {"rows": summarize_rows(rows, merged), "settings": merged, "notes": notes}
