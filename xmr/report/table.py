"""Table 2: one row per method (and grid point), Recall@K as mean ± sample std over its runs.

Rows are methods (rankers by loss, ``clip_cosine``, any other baseline present; a grid sweep
gives one row per grid point); columns are text retrieval (i→t) and image retrieval (t→i)
R@1/5/10 as mean ± sample std over the runs (seeds) of a row, in percent. Recall is hit@K (a
query counts when any relevant item is in its top K) unless ``recall="found"`` asks for the
paper's found/total (eq. 5). Values are measured inside the candidate lists (which always hold
the positive), not over the full gallery; :func:`full_gallery_rows` gives the full-gallery
protocol's table. :class:`Report` holds everything ``xmr report`` derives from a sweep.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.store import TABLE_ORDER
from xmr.report.collect import assign_rows

#: Table 2 order of the rankers (after the baseline); other methods follow.
METHOD_ORDER = ("lambdarank", "neural_ndcg", "listnet", "ranknet")
#: The method every row is compared with (significance, gallery), listed first.
BASELINE = "clip_cosine"


def recall_definition(recall: str) -> str:
    """The caption's words for ``--recall hit|found``."""
    if recall == "hit":
        return "hit@K (a query counts when any relevant item is in its top K)"
    if recall == "found":
        return "found/total (relevant items in the top K / all relevant items; the paper's eq. 5)"
    raise ValueError(f"recall={recall!r}: one of 'hit', 'found'")


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for a single value: undefined, shown as
    ``—``, not as a spread of 0)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def _row_order(name: str, method: str) -> tuple[int, str]:
    if method == BASELINE:
        return 0, name
    if method in METHOD_ORDER:
        return 1 + METHOD_ORDER.index(method), name
    return 1 + len(METHOD_ORDER), name


#: Decimals of the tables' values (percent); also the precision at which values tie.
DECIMALS = 2


def best_flags(values: list[tuple[float, float] | None]) -> list[bool]:
    """Which entries of one table column are the best: the highest mean at the tables' shown
    precision (:data:`DECIMALS`), so values that read the same all count as best (ties);
    ``None`` (no value) never does. The one place the tables' bold cells are decided."""
    shown = [
        round(v[0], DECIMALS) if v is not None and math.isfinite(v[0]) else None for v in values
    ]
    top = max((v for v in shown if v is not None), default=None)
    return [v is not None and v == top for v in shown]


def table(
    runs: list[dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    unfinished: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """row → {"method", "n", "jobs", "failed", "missing", "seeds", "synthetic",
    "runs": [run dicts], "<dir>/R@K": (mean %, std %; NaN std for one run)}; rows in Table 2
    order: CLIP cosine (the baseline) first, then the rankers, then other methods. ``n`` counts
    finished runs, ``jobs`` all jobs of the row."""
    recall_definition(recall)
    key = "recall" if recall == "hit" else "recall_found"
    unfinished = unfinished or []
    everything = list(runs) + list(unfinished)
    is_unfinished = [False] * len(runs) + [True] * len(unfinished)
    names = assign_rows(everything)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    missing: dict[str, int] = defaultdict(int)
    methods: dict[str, str] = {}
    for name, job, pending in zip(names, everything, is_unfinished, strict=True):
        methods[name] = str(job.get("method"))
        if pending:
            (failed if job["status"] == "failed" else missing)[name] += 1
            job["_row"] = name
        else:
            groups[name].append(job)
    rows: dict[str, dict[str, Any]] = {}
    for name in sorted(methods, key=lambda n: _row_order(n, methods[n])):
        group = groups.get(name, [])
        row: dict[str, Any] = {
            "method": methods[name],
            "n": len(group),
            "jobs": len(group) + failed[name] + missing[name],
            "failed": failed[name],
            "missing": missing[name],
            "seeds": sorted({r.get("seed") for r in group}, key=str),
            "synthetic": any(r.get("synthetic") for r in group),
            "runs": group,
        }
        for direction in TABLE_ORDER:
            for k in ks:
                vals = [
                    100 * float(r[f"test/{direction}/{key}@{k}"])
                    for r in group
                    if f"test/{direction}/{key}@{k}" in r
                ]
                if vals:
                    row[f"{direction}/R@{k}"] = _mean_std(vals)
                    row[f"{direction}/n"] = len(vals)
        rows[name] = row
    return rows


def full_gallery_rows(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, dict[str, Any]]:
    """The rows of :func:`table` under the full-gallery protocol (:mod:`xmr.metrics.full_gallery`):
    row → {"n", "top_k": [K...], "first_stage": [...], "skipped": n, "<dir>/R@K": (mean %, std
    %), "<dir>/first/R@K": first stage alone}. Rows whose runs carry no ``test_full/`` keys are
    left out."""
    out: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        runs = [r for r in row["runs"] if any(k.startswith("test_full/") for k in r)]
        infos = [r.get("full_gallery") or {} for r in row["runs"]]
        skipped = sum(1 for i in infos if "skipped" in i)
        if not runs:
            if skipped:
                out[name] = {"n": 0, "skipped": skipped, "top_k": [], "first_stage": []}
            continue
        fg: dict[str, Any] = {
            "n": len(runs),
            "skipped": skipped,
            "top_k": sorted(
                {int(i["top_k"]) for i in infos if "top_k" in i and "skipped" not in i}
            ),
            "first_stage": sorted({str(i["first_stage"]) for i in infos if "first_stage" in i}),
        }
        for d in TABLE_ORDER:
            for k in ks:
                for tag, key in (("", f"recall@{k}"), ("first/", f"first_stage_recall@{k}")):
                    vals = [
                        100 * float(r[f"test_full/{d}/{key}"])
                        for r in runs
                        if f"test_full/{d}/{key}" in r
                    ]
                    if vals:
                        fg[f"{d}/{tag}R@{k}"] = _mean_std(vals)
        out[name] = fg
    return out


def full_gallery_deltas(rows: dict[str, dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(row, direction) → the row's full-gallery mean R@1 minus CLIP cosine's (percent points)."""
    fg = full_gallery_rows(rows, (1,))
    base = next((fg[n] for n, r in rows.items() if r["method"] == BASELINE and n in fg), None)
    if base is None:
        return {}
    return {
        (name, d): row[f"{d}/R@1"][0] - base[f"{d}/R@1"][0]
        for name, row in fg.items()
        for d in TABLE_ORDER
        if f"{d}/R@1" in row and f"{d}/R@1" in base
    }


@dataclass
class Report:
    """Everything ``xmr report`` derives from a sweep directory (see :func:`xmr.report.cli.build_report`)."""

    root: Path
    recall: str
    ks: tuple[int, ...]
    runs: list[dict[str, Any]]
    unfinished: list[dict[str, Any]]
    rows: dict[str, dict[str, Any]]
    n_resamples: int
    seed: int
    #: The paired test of the significance records (:data:`xmr.report.significance.TESTS`).
    test: str
    #: Both protocols' records, Holm-adjusted (:mod:`xmr.report.significance`).
    significance: list[dict[str, Any]] = field(default_factory=list)
    #: The tables' constructions (:mod:`xmr.report.construction`): caption parts.
    full_construction: str = ""
    list_construction: str = ""
    #: Leakage probe lines under the list-protocol table, and its WARNING lines.
    probe_lines: list[str] = field(default_factory=list)
    probe_warnings: list[str] = field(default_factory=list)
    #: WARNING lines for in-list gains the full gallery does not match.
    gain_warnings: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    histories: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    #: CLIP cosine's validation values, the validation plot's reference lines.
    val_reference: dict[str, float] = field(default_factory=dict)
    #: What the report says about its CLIP-cosine row when no run below ROOT provides it
    #: (evaluated by ``xmr report``, or why not: :mod:`xmr.report.baseline`); ``""`` otherwise.
    baseline_note: str = ""

    @property
    def warnings(self) -> list[str]:
        """Every WARNING line of the report (probe, then in-list gains)."""
        return self.probe_warnings + self.gain_warnings

    @property
    def synthetic(self) -> bool:
        """Whether any run used a generated (SYNTHETIC) store."""
        return any(r.get("synthetic") for r in self.runs)
