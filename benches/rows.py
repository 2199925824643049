"""How the end-to-end benches report a row: one line on stdout (``pytest -s`` shows it) and, with
``MIMICFAST_BENCH_OUT`` set, one JSON line appended to that file."""

from __future__ import annotations

import json
import os


def report(tag: str, row: dict) -> None:
    """Print ``row`` as ``[tag] key=value ...`` (floats to 4 significant digits) and append it as JSON."""

    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    print(f"\n[{tag}] " + "  ".join(f"{k}={fmt(v)}" for k, v in row.items()))
    out = os.environ.get("MIMICFAST_BENCH_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"bench": tag, **row}) + "\n")
