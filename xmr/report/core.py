"""Collect a sweep's runs into the paper's Table 2, a significance test, plots and an HTML page.

    xmr report logs/demo                          # writes beside the runs (ROOT)
    xmr report logs/sweeps/loss_seeds/synthetic_paper --out reports/paper --images DIR

Rows are methods (rankers by loss, ``clip_cosine``, any other baseline present; a grid sweep
gives one row per grid point); columns are text retrieval (i→t) and image retrieval (t→i)
R@1/5/10 as mean ± sample std over the runs (seeds) of a row, in percent. Recall is hit@K (a
query counts when any relevant item is in its top K) unless ``--recall found`` asks for the
paper's found/total (eq. 5); the caption says which. Values are measured inside the candidate
lists (which always hold the positive), not over the full gallery.

Significance: a **paired bootstrap over test queries** (seeded, 10,000 resamples) of the
difference in per-query R@1 between a row and the CLIP-cosine baseline on the very same test
lists (rows of the ``predictions_{t2i,i2t}.npz`` files), per seed and pooled (per-query R@1
averaged over the seeds first). The two-sided p-value is
``min(1, 2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`` with P* the bootstrap distribution of the mean
difference, counted with the +1 correction ``(#+1)/(B+1)``; 95% intervals are percentiles.
It measures query-sampling uncertainty of the test set, not seed-to-seed variance (the ± std).

Jobs that failed (``failed.json``) or never finished (``config.yaml`` but no ``results.json``)
are listed in a section of their own and counted in the ``runs`` column (``4 of 5``).

Files written to ``--out`` (default ROOT): ``table.md`` (table, significance, failed/missing
jobs), ``table.csv``, ``table.tex``, ``significance.csv``, ``recall_at_k.png``,
``validation_curves.png`` and ``report.html`` (self-contained, see :mod:`xmr.report.html`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xmr.runs.naming import method_of_config
from xmr.runs.results import flatten_config
from xmr.utils.io import atomic_write_text

log = logging.getLogger(__name__)

DIRECTIONS = (("i2t", "text retrieval (image→text)"), ("t2i", "image retrieval (text→image)"))
METHOD_ORDER = ("lambdarank", "neural_ndcg", "listnet", "ranknet")
BASELINE = "clip_cosine"
DISPLAY = {
    "lambdarank": "LambdaRank",
    "neural_ndcg": "NeuralNDCG",
    "listnet": "ListNet",
    "ranknet": "RankNet",
    "clip_cosine": "CLIP cosine",
}
#: Config keys whose differences between runs of one method make separate rows (grid points).
VARIANT_PREFIXES = (
    "model.",
    "loss.",
    "optimizer.",
    "scheduler.",
    "trainer.max_epochs",
    "data.name",
    "data.mining.",
    "data.max_lists",
)
N_RESAMPLES = 10_000
CURVE_MAX_K = 50


def recall_definition(recall: str) -> str:
    """The caption's words for ``--recall hit|found``."""
    if recall == "hit":
        return "hit@K (a query counts when any relevant item is in its top K)"
    if recall == "found":
        return "found/total (relevant items in the top K / all relevant items; the paper's eq. 5)"
    raise ValueError(f"recall={recall!r}: one of 'hit', 'found'")


# --------------------------------------------------------------------------- collecting runs


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Every readable ``results.json`` below ``root`` (sorted by path), with ``_path`` added."""
    runs = []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable results file ({err})") from err
        if not isinstance(run, dict) or "method" not in run:
            raise ValueError(f"{path}: not an xmr results file (no 'method' field)")
        run["_path"] = str(path)
        runs.append(run)
    return runs


def _read_job_config(job: Path) -> dict[str, Any] | None:
    for path in (job / "config.yaml", job / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
            # A training config has data + model; other config.yaml files (W&B, ...) do not.
            if isinstance(config, dict) and "data" in config and "model" in config:
                return config
    return None


def collect_unfinished(root: str | Path) -> list[dict[str, Any]]:
    """Job directories below ``root`` without ``results.json``: failed or missing.

    ``status`` is ``"failed"`` when the job left ``failed.json`` (``{"error", "config"}``), else
    ``"missing"`` (a training ``config.yaml`` but no results: interrupted, killed, or running).
    Each entry: ``{"_dir", "status", "error", "config", "method", "seed"}``.
    """
    root = Path(root)
    candidates: set[Path] = set()
    for name in ("failed.json", "config.yaml"):
        for path in root.rglob(name):
            job = path.parent.parent if path.parent.name == ".hydra" else path.parent
            candidates.add(job)
    jobs = []
    for job in sorted(candidates):
        if (job / "results.json").exists():
            continue
        inside = [p for p in job.parents if p == root or root in p.parents]
        if any((p / "results.json").exists() for p in inside):
            continue  # inside a finished run (e.g. a logger's own config.yaml)
        failed = job / "failed.json"
        error, config = None, None
        if failed.is_file():
            try:
                record = json.loads(failed.read_text(encoding="utf-8"))
                error = str(record.get("error"))
                config = record.get("config")
            except (OSError, json.JSONDecodeError, AttributeError) as err:
                error = f"unreadable failed.json ({err})"
        if not isinstance(config, dict):
            config = _read_job_config(job)
        if config is None and not failed.is_file():
            continue  # not a training job directory
        jobs.append(
            {
                "_dir": str(job),
                "status": "failed" if failed.is_file() else "missing",
                "error": error,
                "config": config,
                "method": method_of_config(config),
                "seed": (config or {}).get("seed"),
            }
        )
    return jobs


def _short_key(key: str) -> str:
    for prefix in ("model.net.", "model.", "data.mining.", "data."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def assign_rows(jobs: list[dict[str, Any]]) -> list[str]:
    """The table row of each job (finished or not): its method, plus the variant keys.

    Within one method, config values under :data:`VARIANT_PREFIXES` that differ between jobs
    (grid points) are appended: ``neural_ndcg [num_layers=2, ff_dim=128]``. Seeds, paths and the
    direction never split a row (t2i-only and i2t-only jobs fill the two halves of one row).
    """
    flats = []
    for job in jobs:
        flat = flatten_config(job.get("config") or {})
        flats.append(
            {
                k: json.dumps(v)
                for k, v in flat.items()
                if k.startswith(VARIANT_PREFIXES) and k != "data.direction"
            }
        )
    by_method: dict[str, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        by_method[str(job.get("method"))].append(i)
    names = [""] * len(jobs)
    for method, idx in by_method.items():
        keys = sorted({k for i in idx for k in flats[i]})
        varying = [k for k in keys if len({flats[i].get(k) for i in idx}) > 1]
        for i in idx:
            label = ", ".join(
                f"{_short_key(k)}={json.loads(flats[i][k]) if k in flats[i] else '—'}"
                for k in varying
            )
            names[i] = f"{method} [{label}]" if label else method
    return names


# --------------------------------------------------------------------------------- the table


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _row_order(name: str, method: str) -> tuple[int, str]:
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method), name
    return (len(METHOD_ORDER) + (2 if method == BASELINE else 1)), name


def table(
    runs: list[dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    unfinished: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """row → {"method", "n", "jobs", "failed", "missing", "seeds", "synthetic",
    "runs": [run dicts], "<dir>/R@K": (mean %, std %)}; rows in Table 2 order (rankers, other
    methods, CLIP cosine last). ``n`` counts finished runs, ``jobs`` all jobs of the row."""
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
        for direction, _ in DIRECTIONS:
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


def _caption(rows: dict[str, dict[str, Any]], recall: str) -> str:
    synthetic = any(r["synthetic"] for r in rows.values())
    return (
        ("SYNTHETIC data (a generated store, not real images or captions). " if synthetic else "")
        + "Recall@K (%), mean ± sample std over runs (seeds), inside the candidate lists; "
        + f"recall = {recall_definition(recall)}. runs = finished runs (of all jobs, when "
        + "some failed or are missing)."
    )


def _runs_cell(row: dict[str, Any]) -> str:
    return str(row["n"]) if row["jobs"] == row["n"] else f"{row['n']} of {row['jobs']}"


def to_markdown(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
) -> str:
    """Table 2 as Markdown: caption, header, one line per row."""
    head = ["method", "runs"] + [
        f"{'text' if d == 'i2t' else 'image'} retr. ({d}) R@{k}" for d, _ in DIRECTIONS for k in ks
    ]
    lines = [_caption(rows, recall), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, _runs_cell(row)]
        for d, _ in DIRECTIONS:
            for k in ks:
                mean_std = row.get(f"{d}/R@{k}")
                cells.append(f"{mean_std[0]:.2f} ± {mean_std[1]:.2f}" if mean_std else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "i2t = text retrieval (image query → captions); "
        "t2i = image retrieval (caption query → images)."
    )
    return "\n".join(lines) + "\n"


def to_csv(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), recall: str = "hit"
) -> str:
    """One line per row: method, runs, jobs, failed, missing, seeds, synthetic, recall, then
    ``{dir}_R@{k}_mean`` / ``_std`` in percent (empty when absent)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    value_cols = [f"{d}_R@{k}_{s}" for d, _ in DIRECTIONS for k in ks for s in ("mean", "std")]
    writer.writerow(
        ["row", "method", "runs", "jobs", "failed", "missing", "seeds", "synthetic", "recall"]
        + value_cols
    )
    for name, row in rows.items():
        values = []
        for d, _ in DIRECTIONS:
            for k in ks:
                ms = row.get(f"{d}/R@{k}")
                values += [f"{ms[0]:.4f}", f"{ms[1]:.4f}"] if ms else ["", ""]
        writer.writerow(
            [
                name,
                row["method"],
                row["n"],
                row["jobs"],
                row["failed"],
                row["missing"],
                " ".join(str(s) for s in row["seeds"]),
                str(bool(row["synthetic"])).lower(),
                recall,
            ]
            + values
        )
    return buf.getvalue()


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "±": r"$\pm$",
    "→": r"$\to$",
    "—": "--",
}


_TEX_HEADS = {"i2t": r"Text retrieval (i$\to$t)", "t2i": r"Image retrieval (t$\to$i)"}


def _tex(text: str) -> str:
    """Escape LaTeX's special characters (one pass, so escapes are never escaped again)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), recall: str = "hit"
) -> str:
    """Table 2 as a LaTeX ``table`` (booktabs), the caption stating recall and SYNTHETIC."""
    n = len(ks)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _tex(_caption(rows, recall)) + "}",
        r"\label{tab:xmr-table2}",
        r"\begin{tabular}{l r " + " ".join(["r" * n] * len(DIRECTIONS)) + "}",
        r"\toprule",
        " & & "
        + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_TEX_HEADS[d]}}}" for d, _ in DIRECTIONS)
        + r" \\",
        "Method & Runs & " + " & ".join(f"R@{k}" for _ in DIRECTIONS for k in ks) + r" \\",
        r"\midrule",
    ]
    for name, row in rows.items():
        method = row["method"]
        label = DISPLAY.get(method, method) + name[len(method) :]
        cells = [_tex(label), _tex(_runs_cell(row))]
        for d, _ in DIRECTIONS:
            for k in ks:
                ms = row.get(f"{d}/R@{k}")
                cells.append(f"${ms[0]:.2f} \\pm {ms[1]:.2f}$" if ms else "--")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- per-query predictions


_PRED_CACHE: dict[str, dict[str, np.ndarray]] = {}


def run_predictions(run: dict[str, Any], direction: str) -> dict[str, np.ndarray] | None:
    """The predictions arrays of ``run`` for ``direction`` (cached), or None if it has none."""
    from xmr.runs.results import load_predictions

    name = (run.get("predictions") or {}).get(direction)
    if not name:
        return None
    path = Path(run["_path"]).parent / name
    if not path.is_file():
        log.warning("%s: predictions file named in results.json is missing", path)
        return None
    key = f"{path}@{path.stat().st_mtime_ns}"  # a rerun's new file is read again
    if key not in _PRED_CACHE:
        _PRED_CACHE[key] = load_predictions(path)
    return _PRED_CACHE[key]


def per_query_recall(labels: np.ndarray, k: int, recall: str = "hit") -> np.ndarray:
    """Per-query Recall@K from ranked labels ``(Q, L)`` (best first): ``(Q,)`` float, NaN for a
    query without any relevant item (excluded from recall, as in :mod:`xmr.metrics`)."""
    rel = labels.astype(np.float64)  # (Q, L)
    total = rel.sum(1)  # (Q,)
    top = rel[:, :k].sum(1)  # (Q,)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (top > 0).astype(np.float64) if recall == "hit" else top / total
    return np.where(total > 0, value, np.nan)


def recall_curve(labels: np.ndarray, max_k: int = CURVE_MAX_K, recall: str = "hit") -> np.ndarray:
    """Mean Recall@K for K = 1 .. min(max_k, L): ``(K,)`` fractions, from ranked labels (Q, L)."""
    rel = labels.astype(np.float64)  # (Q, L)
    total = rel.sum(1)  # (Q,)
    keep = total > 0
    cum = np.cumsum(rel[keep], axis=1)[:, :max_k]  # (Q', K)
    per = (cum > 0).astype(np.float64) if recall == "hit" else cum / total[keep, None]
    return per.mean(0) if len(per) else np.full(min(max_k, rel.shape[1]), np.nan)


def align_predictions(
    pred: dict[str, np.ndarray], base: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices into (pred, base) that pair the same query over the same candidate set."""
    if pred["query"].shape == base["query"].shape and np.array_equal(pred["query"], base["query"]):
        idx = np.arange(len(pred["query"]))
        a, b = idx, idx
    else:
        order = {int(q): i for i, q in enumerate(base["query"])}
        pairs = [(i, order[int(q)]) for i, q in enumerate(pred["query"]) if int(q) in order]
        if len(pairs) < len(pred["query"]) or len(pairs) < len(base["query"]):
            return None
        a = np.array([p[0] for p in pairs], np.int64)
        b = np.array([p[1] for p in pairs], np.int64)
    cand_a = np.sort(pred["candidates"][a], axis=1)
    cand_b = np.sort(base["candidates"][b], axis=1)
    if cand_a.shape != cand_b.shape or not np.array_equal(cand_a, cand_b):
        return None
    return a, b


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap over queries of ``mean(a - b)``; ``a``, ``b``: per-query values (Q,).

    Queries with a NaN in either are dropped. Resamples query indices with replacement
    (``numpy.random.default_rng(seed)``, in chunks). Returns ``delta`` (observed mean
    difference), ``low``/``high`` (2.5/97.5 percentiles of the resampled means), ``p``
    (two-sided: ``min(1, 2 · min((#{Δ* ≤ 0}+1)/(B+1), (#{Δ* ≥ 0}+1)/(B+1)))``) and ``queries``.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)  # (Q,)
    d = d[np.isfinite(d)]
    q = len(d)
    if q == 0:
        return {"delta": math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "queries": 0}
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // q)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, q, size=(stop - start, q))  # (chunk, Q)
        means[start:stop] = d[idx].mean(1)
    below = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1)
    above = (np.count_nonzero(means >= 0) + 1) / (n_resamples + 1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "delta": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "p": float(min(1.0, 2 * min(below, above))),
        "queries": q,
    }


def significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    recall: str = "hit",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each row against the CLIP-cosine row: paired bootstrap of per-query R@k (see module doc).

    Returns records ``{"row", "direction", "seed" ("pooled" or a seed), "delta", "low", "high"
    (percent points), "p", "queries", "note"}``; a record with a ``note`` and NaN values when a
    comparison is impossible (no predictions, different test lists).
    """
    base_rows = [r for r in rows.values() if r["method"] == BASELINE and r["runs"]]
    if not base_rows:
        return []
    base_runs = base_rows[0]["runs"]
    records = []
    for name, row in rows.items():
        if row["method"] == BASELINE or not row["runs"]:
            continue
        for direction, _ in DIRECTIONS:
            base_preds = [p for r in base_runs if (p := run_predictions(r, direction)) is not None]
            if not base_preds:
                continue
            base = base_preds[0]
            base_value = np.nanmean(
                [per_query_recall(p["labels"], k, recall) for p in base_preds], axis=0
            )  # (Q,) mean over the baseline's runs (one, usually: cosine has no seed)
            per_seed, note = [], ""
            for run in sorted(row["runs"], key=lambda r: str(r.get("seed"))):
                pred = run_predictions(run, direction)
                if pred is None:
                    continue
                pair = align_predictions(pred, base)
                if pair is None:
                    note = "different test lists than the baseline: not compared"
                    continue
                a_idx, b_idx = pair
                value = per_query_recall(pred["labels"], k, recall)[a_idx]  # (Q,)
                per_seed.append((run.get("seed"), value, base_value[b_idx]))
            if not per_seed:
                if note:
                    records.append(_nan_record(name, direction, note))
                continue
            for run_seed, value, base_q in per_seed:
                records.append(
                    _record(
                        name,
                        direction,
                        run_seed,
                        paired_bootstrap(value, base_q, n_resamples, seed),
                    )
                )
            if len(per_seed) > 1:
                pooled = np.nanmean(np.stack([v for _, v, _ in per_seed]), axis=0)  # (Q,)
                records.append(
                    _record(
                        name,
                        direction,
                        "pooled",
                        paired_bootstrap(pooled, per_seed[0][2], n_resamples, seed),
                    )
                )
    return records


def _record(name: str, direction: str, seed: Any, res: dict[str, float]) -> dict[str, Any]:
    return {
        "row": name,
        "direction": direction,
        "seed": seed,
        "delta": 100 * res["delta"],
        "low": 100 * res["low"],
        "high": 100 * res["high"],
        "p": res["p"],
        "queries": res["queries"],
        "note": "",
    }


def _nan_record(name: str, direction: str, note: str) -> dict[str, Any]:
    nan = math.nan
    return {
        "row": name,
        "direction": direction,
        "seed": "pooled",
        "delta": nan,
        "low": nan,
        "high": nan,
        "p": nan,
        "queries": 0,
        "note": note,
    }


def significance_caption(k: int = 1, n_resamples: int = N_RESAMPLES, seed: int = 0) -> str:
    return (
        f"Δ R@{k} vs CLIP cosine (percent points) on the same test queries: paired bootstrap over "
        f"queries, {n_resamples:,} resamples (seed {seed}); 95% percentile interval; two-sided p. "
        "'pooled' averages each query's R@1 over the seeds first; per-seed rows are in "
        "significance.csv. The test reflects query sampling, not seed variance."
    )


def significance_markdown(records: list[dict[str, Any]], k: int = 1, **caption: Any) -> str:
    """Summary table: one line per (row, direction) — pooled when there are several seeds."""
    if not records:
        return "No CLIP-cosine baseline with predictions files: no significance test.\n"
    lines = [
        significance_caption(k, **caption),
        "",
        f"| method | direction | seeds | Δ R@{k} | 95% interval | p |",
        "|---|---|---|---|---|---|",
    ]
    shown: dict[tuple[str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for rec in records:
        key = (rec["row"], rec["direction"])
        if rec["seed"] != "pooled":
            counts[key] += 1
        if rec["seed"] == "pooled" or key not in shown:
            shown[key] = rec
    for (name, direction), rec in shown.items():
        if rec["note"]:
            lines.append(f"| {name} | {direction} | — | — | — | {rec['note']} |")
            continue
        lines.append(
            f"| {name} | {direction} | {counts[(name, direction)]} | {rec['delta']:+.2f} | "
            f"[{rec['low']:+.2f}, {rec['high']:+.2f}] | {_p(rec['p'])} |"
        )
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def significance_csv(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = ["row", "direction", "seed", "delta", "low", "high", "p", "queries", "note"]
    writer.writerow(cols)
    for rec in records:
        writer.writerow([f"{rec[c]:.6g}" if isinstance(rec[c], float) else rec[c] for c in cols])
    return buf.getvalue()


def error_summary(error: str | None, width: int = 200) -> str:
    """One line of a failed job's error: the exception line of a traceback, else the first."""
    if not error:
        return "no results.json (interrupted or still running)"
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    pattern = re.compile(r"^[\w.]+(Error|Exception|Interrupt)\b")
    line = next((ln for ln in reversed(lines) if pattern.match(ln)), lines[0] if lines else "")
    return line.replace("|", "/")[:width]


def unfinished_markdown(unfinished: list[dict[str, Any]]) -> str:
    if not unfinished:
        return "Failed / missing jobs: none.\n"
    lines = [
        f"Failed / missing jobs ({len(unfinished)}): not in the means above.",
        "",
        "| status | row | seed | job directory | error |",
        "|---|---|---|---|---|",
    ]
    for job in unfinished:
        lines.append(
            f"| {job['status']} | {job.get('_row', job['method'])} | {job.get('seed')} | "
            f"{job['_dir']} | {error_summary(job.get('error'))} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- curves and histories


def recall_curves(
    rows: dict[str, dict[str, Any]], max_k: int = CURVE_MAX_K, recall: str = "hit"
) -> dict[str, dict[str, np.ndarray]]:
    """row → direction → mean Recall@K curve over the row's runs, ``(K,)`` fractions, K = 1..."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, row in rows.items():
        for direction, _ in DIRECTIONS:
            per_run = [
                recall_curve(p["labels"], max_k, recall)
                for r in row["runs"]
                if (p := run_predictions(r, direction)) is not None
            ]
            if per_run:
                width = min(len(c) for c in per_run)
                curves.setdefault(name, {})[direction] = np.mean(
                    [c[:width] for c in per_run], axis=0
                )
    return curves


def histories(rows: dict[str, dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """row → one list of validation records (``metrics.jsonl``, stage ``val``) per run."""
    from xmr.callbacks.history import read_history

    out: dict[str, list[list[dict[str, Any]]]] = {}
    for name, row in rows.items():
        for run in row["runs"]:
            path = Path(run["_path"]).parent / "metrics.jsonl"
            if path.is_file():
                val = [r for r in read_history(path) if r.get("stage") == "val"]
                if val:
                    out.setdefault(name, []).append(val)
    return out


# ------------------------------------------------------------- the full-gallery protocol table


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
        for d, _ in DIRECTIONS:
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


def full_gallery_markdown(rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10)) -> str:
    """The full-gallery protocol table (Markdown): one line per row of :func:`table`, labelled
    with the first stage and K; a last line gives the first stage alone (no re-ranking)."""
    fg = full_gallery_rows(rows, ks)
    if not fg:
        return "No run carries the full-gallery protocol (`protocol=full_gallery`).\n"
    synthetic = any(rows[n]["synthetic"] for n in fg)
    caption = (
        ("SYNTHETIC data. " if synthetic else "")
        + "Full-gallery protocol: a first stage ranks the whole test gallery (t2i: all test "
        "images; i2t: all test captions), the method re-ranks the first stage's top K, Recall@K "
        "(%, hit@K, mean ± sample std over runs) over that ranking; a query whose positives fall "
        "outside the top K is a miss (positives are never inserted). Not comparable with the "
        "list-protocol table above, whose lists always hold the positive."
    )
    head = ["method", "runs", "first stage", "K"] + [
        f"{'text' if d == 'i2t' else 'image'} retr. ({d}) R@{k}" for d, _ in DIRECTIONS for k in ks
    ]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(row: dict[str, Any], tag: str) -> list[str]:
        out = []
        for d, _ in DIRECTIONS:
            for k in ks:
                ms = row.get(f"{d}/{tag}R@{k}")
                out.append(f"{ms[0]:.2f} ± {ms[1]:.2f}" if ms else "—")
        return out

    first_rows: dict[str, dict[str, Any]] = {}
    for name, row in fg.items():
        runs = str(row["n"]) + (f" ({row['skipped']} skipped)" if row["skipped"] else "")
        stage = "/".join(row["first_stage"]) or "—"
        k_cell = "/".join(str(k) for k in row["top_k"]) or "—"
        lines.append("| " + " | ".join([name, runs, stage, k_cell, *cells(row, "")]) + " |")
        if row["n"]:
            store = str(((rows[name]["runs"] or [{}])[0].get("store") or {}).get("path"))
            first_rows.setdefault(f"{stage}\t{store}", row)
    stores = {key.split("\t")[1] for key in first_rows}
    for key, row in first_rows.items():
        stage, store = key.split("\t")
        if stage != "self":  # a model's own first stage is that model's row already
            where = f", {Path(store).name}" if len(stores) > 1 else ""
            label = f"first stage alone ({stage}{where}, no re-ranking)"
            lines.append(
                "| " + " | ".join([label, str(row["n"]), stage, "—", *cells(row, "first/")]) + " |"
            )
    lines.append("")
    lines.append(
        "first stage: cosine = the store's embeddings; self = the method's own space (pairwise "
        "baselines on a store without a joint space). Runs whose store offers no first stage "
        "for the method are counted as skipped."
    )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything ``xmr report`` derives from a sweep directory (see :func:`build_report`)."""

    root: Path
    recall: str
    ks: tuple[int, ...]
    runs: list[dict[str, Any]]
    unfinished: list[dict[str, Any]]
    rows: dict[str, dict[str, Any]]
    significance: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    histories: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    n_resamples: int = N_RESAMPLES
    seed: int = 0

    @property
    def synthetic(self) -> bool:
        return any(r.get("synthetic") for r in self.runs)

    def markdown(self) -> str:
        """``table.md``: Table 2, the significance summary and the failed / missing jobs."""
        return "\n".join(
            [
                "# xmr report" + (" — SYNTHETIC data" if self.synthetic else ""),
                "",
                f"Runs below `{self.root}`.",
                "",
                "## Table 2",
                "",
                to_markdown(self.rows, self.ks, self.recall),
                "## Full-gallery protocol",
                "",
                full_gallery_markdown(self.rows, self.ks),
                "## Significance vs CLIP cosine",
                "",
                significance_markdown(
                    self.significance, n_resamples=self.n_resamples, seed=self.seed
                ),
                "## Failed / missing jobs",
                "",
                unfinished_markdown(self.unfinished),
            ]
        )


def build_report(
    root: str | Path,
    recall: str = "hit",
    ks: tuple[int, ...] = (1, 5, 10),
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Report:
    """Collect the runs below ``root`` and derive the table, significance, curves, histories."""
    recall_definition(recall)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (give a sweep's output directory)")
    runs = collect(root)
    unfinished = collect_unfinished(root)
    if not runs and not unfinished:
        raise FileNotFoundError(f"{root}: no results.json (and no job directories) below it")
    rows = table(runs, ks, recall, unfinished)
    return Report(
        root=root,
        recall=recall,
        ks=ks,
        runs=runs,
        unfinished=unfinished,
        rows=rows,
        significance=significance(rows, 1, recall, n_resamples, seed),
        curves=recall_curves(rows, CURVE_MAX_K, recall),
        histories=histories(rows),
        n_resamples=n_resamples,
        seed=seed,
    )


def write_report(
    report: Report,
    out: str | Path,
    images: str | Path | None = None,
    plots: bool = True,
    html: bool = True,
    gallery: int = 6,
) -> dict[str, Path]:
    """Write the report's files into ``out``; returns name → path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "table.md": atomic_write_text(out / "table.md", report.markdown()),
        "table.csv": atomic_write_text(
            out / "table.csv", to_csv(report.rows, report.ks, report.recall)
        ),
        "table.tex": atomic_write_text(
            out / "table.tex", to_latex(report.rows, report.ks, report.recall)
        ),
        "significance.csv": atomic_write_text(
            out / "significance.csv", significance_csv(report.significance)
        ),
    }
    if plots:
        from xmr.report.plots import plot_recall_curves, plot_validation_curves

        if report.curves:
            written["recall_at_k.png"] = plot_recall_curves(
                report.curves, out / "recall_at_k.png", report.recall, report.synthetic
            )
        if report.histories:
            written["validation_curves.png"] = plot_validation_curves(
                report.histories, out / "validation_curves.png", report.synthetic
            )
    if html:
        from xmr.report.html import write_html

        written["report.html"] = write_html(
            report, out / "report.html", images=images, plots=written, gallery=gallery
        )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="xmr report", description=(__doc__ or "").split("\n", 1)[0]
    )
    parser.add_argument("root", help="directory holding the runs (results.json files below it)")
    parser.add_argument("--out", help="where to write the report (default: ROOT)")
    parser.add_argument("--recall", choices=("hit", "found"), default="hit")
    parser.add_argument(
        "--images", help="folder of the store's photos (images.txt names) for the HTML gallery"
    )
    parser.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--gallery", type=int, default=6, help="gallery queries per direction")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")
    try:
        report = build_report(args.root, args.recall, n_resamples=args.resamples, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"xmr report: {err}") from err
    written = write_report(
        report,
        args.out or args.root,
        images=args.images,
        plots=not args.no_plots,
        html=not args.no_html,
        gallery=args.gallery,
    )
    print(report.markdown())
    for path in written.values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
