"""Renderers of the report's tables: Markdown (``table.md``), CSV and LaTeX, with their captions.

:func:`report_markdown` is ``table.md``: Table 2, the full-gallery protocol table, the
significance summary and the failed / missing jobs.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from xmr.data.store import DIRECTION_TITLES, TABLE_ORDER
from xmr.report.significance import N_RESAMPLES
from xmr.report.table import Report, full_gallery_rows, recall_definition

#: Row labels of the methods in the LaTeX table.
DISPLAY = {
    "lambdarank": "LambdaRank",
    "neural_ndcg": "NeuralNDCG",
    "listnet": "ListNet",
    "ranknet": "RankNet",
    "clip_cosine": "CLIP cosine",
}


def direction_heading(direction: str) -> str:
    """A direction's column-group heading: ``Text retrieval (i→t)``, ``Image retrieval (t→i)``."""
    return (
        f"{DIRECTION_TITLES[direction].split(' (')[0].capitalize()} ({direction.replace('2', '→')})"
    )


def column_heading(direction: str) -> str:
    """A direction's short column prefix in Markdown: ``text retr. (i2t)``."""
    return f"{DIRECTION_TITLES[direction].split()[0]} retr. ({direction})"


def table_caption(rows: dict[str, dict[str, Any]], recall: str) -> str:
    """Table 2's caption: SYNTHETIC, what the values are, the recall definition."""
    synthetic = any(r["synthetic"] for r in rows.values())
    return (
        ("SYNTHETIC data (a generated store, not real images or captions). " if synthetic else "")
        + "Recall@K (%), mean ± sample std over runs (seeds), inside the candidate lists; "
        + f"recall = {recall_definition(recall)}. runs = finished runs (of all jobs, when "
        + "some failed or are missing)."
    )


def runs_cell(row: dict[str, Any]) -> str:
    """A row's ``runs`` cell: finished runs, ``"4 of 5"`` when some jobs failed or are missing."""
    return str(row["n"]) if row["jobs"] == row["n"] else f"{row['n']} of {row['jobs']}"


def to_markdown(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
) -> str:
    """Table 2 as Markdown: caption, header, one line per row."""
    head = ["method", "runs"] + [f"{column_heading(d)} R@{k}" for d in TABLE_ORDER for k in ks]
    lines = [
        table_caption(rows, recall),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, row in rows.items():
        cells = [name, runs_cell(row)]
        for d in TABLE_ORDER:
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
    value_cols = [f"{d}_R@{k}_{s}" for d in TABLE_ORDER for k in ks for s in ("mean", "std")]
    writer.writerow(
        ["row", "method", "runs", "jobs", "failed", "missing", "seeds", "synthetic", "recall"]
        + value_cols
    )
    for name, row in rows.items():
        values = []
        for d in TABLE_ORDER:
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
        r"\caption{" + _tex(table_caption(rows, recall)) + "}",
        r"\label{tab:xmr-table2}",
        r"\begin{tabular}{l r " + " ".join(["r" * n] * len(TABLE_ORDER)) + "}",
        r"\toprule",
        " & & "
        + " & ".join(
            rf"\multicolumn{{{n}}}{{c}}{{{_tex(direction_heading(d))}}}" for d in TABLE_ORDER
        )
        + r" \\",
        "Method & Runs & " + " & ".join(f"R@{k}" for _ in TABLE_ORDER for k in ks) + r" \\",
        r"\midrule",
    ]
    for name, row in rows.items():
        method = row["method"]
        label = DISPLAY.get(method, method) + name[len(method) :]
        cells = [_tex(label), _tex(runs_cell(row))]
        for d in TABLE_ORDER:
            for k in ks:
                ms = row.get(f"{d}/R@{k}")
                cells.append(f"${ms[0]:.2f} \\pm {ms[1]:.2f}$" if ms else "--")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


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
        f"{column_heading(d)} R@{k}" for d in TABLE_ORDER for k in ks
    ]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(row: dict[str, Any], tag: str) -> list[str]:
        out = []
        for d in TABLE_ORDER:
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


def significance_caption(k: int = 1, n_resamples: int = N_RESAMPLES, seed: int = 0) -> str:
    """The significance table's caption: the test, its resamples and seed."""
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
            f"[{rec['low']:+.2f}, {rec['high']:+.2f}] | {format_p(rec['p'])} |"
        )
    return "\n".join(lines) + "\n"


def format_p(p: float) -> str:
    """A p-value for a table: 4 decimals, scientific below 1e-4, ``—`` when undefined."""
    if not math.isfinite(p):
        return "—"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def significance_csv(records: list[dict[str, Any]]) -> str:
    """``significance.csv``: every record (per seed and pooled), one line each."""
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
    """The failed / missing jobs as a Markdown table (status, row, seed, directory, error)."""
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


def report_markdown(report: Report) -> str:
    """``table.md``: Table 2, the significance summary and the failed / missing jobs."""
    return "\n".join(
        [
            "# xmr report" + (" — SYNTHETIC data" if report.synthetic else ""),
            "",
            f"Runs below `{report.root}`.",
            "",
            "## Table 2",
            "",
            to_markdown(report.rows, report.ks, report.recall),
            "## Full-gallery protocol",
            "",
            full_gallery_markdown(report.rows, report.ks),
            "## Significance vs CLIP cosine",
            "",
            significance_markdown(
                report.significance, n_resamples=report.n_resamples, seed=report.seed
            ),
            "## Failed / missing jobs",
            "",
            unfinished_markdown(report.unfinished),
        ]
    )
