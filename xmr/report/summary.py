"""The lines ``xmr report`` ends with, after writing its files (at most 4, short).

::

    wrote logs/demo/table.md (and table.csv, table.tex, significance.csv, report.html)
    runs: 10 finished below logs/demo (baselines/, clip_cosine/, rankers/, reranker/)
    best full-gallery row: listnet — t2i R@1 34.50 vs CLIP cosine 30.20 (+4.30 points, Holm p 0.0012), i2t R@1 ...; SYNTHETIC data

- what was written: ``table.md`` and the other files beside it;
- the runs the report read (its ROOT, with the top-level folders holding them, and the failed or
  missing jobs), then the line about a CLIP cosine evaluated by ``xmr report`` when it was
  (:mod:`xmr.report.baseline`);
- the verdict (:func:`verdict_line`): the best row of the full-gallery table by the mean of its
  R@1 over both directions against CLIP cosine, per direction, with Δ in percent points and the
  Holm-adjusted p of the full-gallery test (:mod:`xmr.report.significance`); the list protocol's
  table when no run has the full gallery.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from xmr.data.store import DIRECTIONS
from xmr.report.baseline import evaluated_here
from xmr.report.significance import family, format_p
from xmr.report.table import BASELINE, Report, full_gallery_rows

#: Top-level folders below ROOT the runs line names before eliding the rest.
MAX_FOLDERS = 6


def _r1(row: dict[str, Any], direction: str) -> float | None:
    value = row.get(f"{direction}/R@1")
    return float(value[0]) if value is not None and math.isfinite(value[0]) else None


def _best(rows: dict[str, dict[str, Any]], methods: dict[str, str]) -> str | None:
    """The row (not CLIP cosine) with the highest mean R@1 over the directions it has, rows with
    both directions first; ties: the first in table order."""
    scored = []
    for name, row in rows.items():
        if methods.get(name) == BASELINE:
            continue
        values = [v for d in DIRECTIONS if (v := _r1(row, d)) is not None]
        if values:
            scored.append((len(values), sum(values) / len(values), name))
    if not scored:
        return None
    top = max(scored, key=lambda s: (s[0], s[1]))
    return next(s[2] for s in scored if (s[0], s[1]) == (top[0], top[1]))


def verdict_line(report: Report) -> str:
    """``best full-gallery row: X — t2i R@1 a vs CLIP cosine b (+d points, Holm p ..), i2t
    ...; SYNTHETIC data`` (module docstring)."""
    methods = {name: row["method"] for name, row in report.rows.items()}
    full = full_gallery_rows(report.rows, (1,))
    protocol, table = "full-gallery", full
    if not any(_r1(r, d) is not None for r in full.values() for d in DIRECTIONS):
        protocol, table = "in-list", {n: r for n, r in report.rows.items() if r["runs"]}
    tag = "; SYNTHETIC data" if report.synthetic else ""
    best = _best(table, methods)
    if best is None:
        return f"best {protocol} row: none besides CLIP cosine{tag}"
    base = next((table[n] for n, m in methods.items() if m == BASELINE and n in table), None)
    tests = {
        (r["row"], r["direction"]): r
        for r in family(report.significance)
        if r["protocol"] == ("full_gallery" if protocol == "full-gallery" else "lists")
    }
    parts = []
    for d in DIRECTIONS:
        value = _r1(table[best], d)
        if value is None:
            continue
        ref = _r1(base, d) if base is not None else None
        if ref is None:
            parts.append(f"{d} R@1 {value:.2f}")
            continue
        test = tests.get((best, d))
        p = f", Holm p {format_p(test['p_holm'])}" if test and not test["note"] else ""
        parts.append(f"{d} R@1 {value:.2f} vs CLIP cosine {ref:.2f} ({value - ref:+.2f} points{p})")
    missing = "" if base is not None else " (no CLIP-cosine row to compare with)"
    return f"best {protocol} row: {best} — {', '.join(parts)}{missing}{tag}"


def _folders(report: Report) -> str:
    """The top-level folders below ROOT holding its runs (``baselines/, rankers/``), when some
    folder groups several runs (a sweep's own job folders are not listed); else ``""``."""
    root = Path(report.root)
    counts: Counter[str] = Counter()
    for run in report.runs:
        if evaluated_here(run):
            continue
        try:
            rel = Path(run["_path"]).relative_to(root)
        except ValueError:
            continue
        counts[f"{rel.parts[0]}/" if len(rel.parts) > 1 else "."] += 1
    names = [name for name in counts if name != "."]
    if not names or max(counts.values()) < 2:
        return ""
    shown = sorted(names)[:MAX_FOLDERS]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def summary_lines(report: Report, written: dict[str, Path]) -> list[str]:
    """The lines ``xmr report`` prints last (module docstring); ``written``: file name → path of
    what it wrote."""
    others = [name for name in written if name != "table.md"]
    main = written.get("table.md") or next(iter(written.values()), None)
    lines = [f"wrote {main}" + (f" (and {', '.join(others)})" if others else "")]
    finished = sum(1 for run in report.runs if not evaluated_here(run))
    runs = f"runs: {finished} finished below {report.root}"
    folders = _folders(report)
    if folders:
        runs += f" ({folders})"
    if report.unfinished:
        runs += f"; {len(report.unfinished)} failed or missing"
    lines.append(runs)
    if report.baseline_note:
        lines.append(report.baseline_note)
    lines.append(verdict_line(report))
    return lines
