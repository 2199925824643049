"""``summary.json`` and ``summary.md`` of an evaluation folder: accuracy per (defense, attack, protocol).

``summary.json`` is ``{"rows": [{"defense", "attack", "protocol", "accuracy", "n", "ci95": [lo, hi]}],
"settings": {...}}``. An image counts in a protocol once all its N draws are written (N = the folder's
``draws``; 1 for the bare classifier), so a summary of a run still in progress covers the images finished so far.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from mimicfast.atomic import write_text
from mimicfast.evaluate.protocols import PROTOCOLS, image_correct, wilson_interval
from mimicfast.evaluate.store import read_jsonl, read_rows, read_settings

_PROTOCOL_TITLES = {"own": "own seed", "worst": "worst of {N}", "majority": "majority of {N}"}


ALL_ATTACKS = "all attacks (per image)"


def summarize_rows(rows: list[dict], draws: int) -> list[dict]:
    """The summary rows of ``rows`` (in first-seen (defense, attack) order), judged on draws ``0..draws-1``.

    A defense attacked by two or more attacks also gets an :data:`ALL_ATTACKS` row: an image counts only if it
    counts under every attack (the attacker picks the best attack per image, as AutoAttack's ensemble does), over
    the images finished under all of them.
    """
    preds: dict[tuple[str, str], dict[int, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    labels: dict[int, int] = {}
    for row in rows:
        preds[row["defense"], row["attack"]][int(row["index"])][int(row["draw"])] = int(row["pred"])
        labels[int(row["index"])] = int(row["label"])
    complete: dict[tuple[str, str], dict[int, list[int]]] = {}
    for (defense, attack), per_image in preds.items():
        # The bare classifier is deterministic: it is scored with one draw.
        need = 1 if defense == "none" else draws
        complete[defense, attack] = {i: [d[k] for k in range(need)] for i, d in per_image.items()
                                     if all(k in d for k in range(need))}
    for defense in dict.fromkeys(d for d, _ in complete):
        attacked = [a for d, a in complete if d == defense and a != "clean"]
        if len(attacked) >= 2:
            images = set.intersection(*(set(complete[defense, a]) for a in attacked))
            complete[defense, ALL_ATTACKS] = {i: [complete[defense, a][i] for a in attacked] for i in sorted(images)}
    out = []
    for (defense, attack), per_image in complete.items():
        for protocol in PROTOCOLS:
            n = len(per_image)
            if attack == ALL_ATTACKS:
                correct = sum(all(image_correct(p, labels[i], protocol) for p in per_attack)
                              for i, per_attack in per_image.items())
            else:
                correct = sum(image_correct(p, labels[i], protocol) for i, p in per_image.items())
            lo, hi = wilson_interval(correct, n)
            out.append({"defense": defense, "attack": attack, "protocol": protocol,
                        "accuracy": correct / n if n else float("nan"), "n": n, "ci95": [lo, hi]})
    return out


def format_markdown(rows: list[dict], draws: int) -> str:
    """A Markdown table: one line per (defense, attack), a column per protocol (accuracy, 95% interval, n)."""
    cells: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        cells[r["defense"], r["attack"]][r["protocol"]] = r
    head = [_PROTOCOL_TITLES[p].format(N=draws) for p in PROTOCOLS]
    lines = ["| defense | attack | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for (defense, attack), by_protocol in cells.items():
        lines.append(f"| {defense} | {attack} | " + " | ".join(_cell(by_protocol[p]) for p in PROTOCOLS) + " |")
    return "\n".join(lines)


def _cell(r: dict) -> str:
    if not r["n"]:
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"


def summarize(out: Path, draws: int | None = None) -> dict:
    """Write ``rows.jsonl`` (all ranks' rows, sorted), ``summary.json`` and ``summary.md`` into ``out``; return
    the summary. ``draws`` defaults to the folder's last run's."""
    settings = read_settings(out)
    draws = settings["draws"] if draws is None else draws
    rows = sorted(read_rows(out).values(), key=lambda r: (r["defense"], r["attack"], r["index"], r["draw"]))
    # Keep the order in which the run evaluated defenses and attacks.
    order = {(d, a): k for k, (d, a) in enumerate((d, a) for d in settings["defenses"] for a in settings["attacks"])}
    rows.sort(key=lambda r: order.get((r["defense"], r["attack"]), len(order)))
    write_text(out / "rows.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summary = {"rows": summarize_rows(rows, draws), "settings": {**settings, "draws": draws}}
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    timing = read_jsonl(sorted((out / "timing").glob("rank-*.jsonl")))
    seconds = sum(t["attack_s"] + t["score_s"] for t in timing)
    text = (f"# Evaluation: {out}\n\n{format_markdown(summary['rows'], draws)}\n\n"
            f"Accuracy [95% Wilson interval] (images). Settings: `{json.dumps(settings['fixed'])}`; "
            f"{draws} defense draws. Compute: {seconds:.0f} s summed over batches and processes.\n")
    write_text(out / "summary.md", text)
    return summary


def combined_markdown(folders: list[Path], summaries: list[dict]) -> str:
    """One Markdown table over several folders (one folder: its own table). Folders with the same number of
    draws are summarised together, so the :data:`ALL_ATTACKS` row covers the attacks of all of them."""
    draws = {s["settings"]["draws"] for s in summaries}
    if len(draws) == 1:
        n_draws = draws.pop()
        rows = [r for folder in folders for r in read_rows(folder).values()]
        return format_markdown(summarize_rows(rows, n_draws), n_draws)
    return "\n\n".join(f"{folder}:\n\n" + format_markdown(s["rows"], s["settings"]["draws"])
                       for folder, s in zip(folders, summaries, strict=True))
