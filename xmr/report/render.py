"""Renderers of the report's tables: Markdown (``table.md``), CSV and LaTeX, with their captions.

:func:`report_markdown` is ``table.md`` and :func:`report_latex` ``table.tex``: the full-gallery
protocol table first (it cannot be gamed), then the list-protocol table (Table 2) with the
leakage probe of its lists, each captioned with its construction; the significance of both
protocols (Holm-adjusted) with the in-list-vs-full-gallery warnings; the failed / missing jobs.
:func:`to_csv` is ``table.csv``: one line per row holding both protocols' values.
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
from xmr.report.significance import (
    ALPHA,
    GAIN_RULE,
    N_RESAMPLES,
    PROTOCOL_TITLES,
    family,
    format_p,
)
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


def _with(caption: str, construction: str) -> str:
    return f"{caption} {construction}" if construction else caption


def to_markdown(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    construction: str = "",
) -> str:
    """Table 2 as Markdown: caption (with ``construction``), header, one line per row."""
    head = ["method", "runs"] + [f"{column_heading(d)} R@{k}" for d in TABLE_ORDER for k in ks]
    lines = [
        _with(table_caption(rows, recall), construction),
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
    """One line per row holding both protocols: method, runs, jobs, failed, missing, seeds,
    synthetic, recall, then the list protocol's ``{dir}_R@{k}_mean`` / ``_std`` (percent), then
    the full-gallery protocol's ``full_runs``, ``full_first_stage``, ``full_top_k``,
    ``full_{dir}_R@{k}_mean`` / ``_std`` and the first stage alone's
    ``full_first_{dir}_R@{k}_mean`` / ``_std`` (empty when absent)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    value_cols = [f"{d}_R@{k}_{s}" for d in TABLE_ORDER for k in ks for s in ("mean", "std")]
    full_cols = [
        f"full_{tag}{d}_R@{k}_{s}"
        for tag in ("", "first_")
        for d in TABLE_ORDER
        for k in ks
        for s in ("mean", "std")
    ]
    writer.writerow(
        ["row", "method", "runs", "jobs", "failed", "missing", "seeds", "synthetic", "recall"]
        + value_cols
        + ["full_runs", "full_first_stage", "full_top_k"]
        + full_cols
    )
    fg = full_gallery_rows(rows, ks)
    for name, row in rows.items():
        values = []
        for d in TABLE_ORDER:
            for k in ks:
                ms = row.get(f"{d}/R@{k}")
                values += [f"{ms[0]:.4f}", f"{ms[1]:.4f}"] if ms else ["", ""]
        full = fg.get(name, {})
        full_values = [
            full.get("n", ""),
            " ".join(full.get("first_stage", [])),
            " ".join(str(k) for k in full.get("top_k", [])),
        ]
        for tag in ("", "first/"):
            for d in TABLE_ORDER:
                for k in ks:
                    ms = full.get(f"{d}/{tag}R@{k}")
                    full_values += [f"{ms[0]:.4f}", f"{ms[1]:.4f}"] if ms else ["", ""]
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
            + full_values
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
    "–": "--",
    "Δ": r"$\Delta$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "<": r"$<$",
    ">": r"$>$",
}


def _tex(text: str) -> str:
    """Escape LaTeX's special characters (one pass, so escapes are never escaped again)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    construction: str = "",
    notes: list[str] | None = None,
) -> str:
    """Table 2 as a LaTeX ``table`` (booktabs), the caption stating recall, SYNTHETIC and the
    ``construction``; ``notes`` (probe and WARNING lines) follow the tabular."""
    n = len(ks)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _tex(_with(table_caption(rows, recall), construction)) + "}",
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
    lines += [r"\bottomrule", r"\end{tabular}", *_tex_notes(notes), r"\end{table}"]
    return "\n".join(lines) + "\n"


def _tex_notes(notes: list[str] | None) -> list[str]:
    """Note lines below a tabular (inside its ``table``), one paragraph each."""
    return [r"\par\smallskip{\footnotesize " + _tex(n.replace("`", "")) + "}" for n in notes or []]


#: The full-gallery table's caption (after "SYNTHETIC data. " when it applies).
FULL_GALLERY_CAPTION = (
    "Full-gallery protocol: a first stage ranks the whole test gallery (t2i: all test "
    "images; i2t: all test captions), the method re-ranks the first stage's top K, Recall@K "
    "(%, hit@K, mean ± sample std over runs) over that ranking; a query whose positives fall "
    "outside the top K is a miss (positives are never inserted), so no list construction can "
    "favour a method. Not comparable with the list-protocol table below, whose lists always "
    "hold the positive."
)
FULL_GALLERY_NOTE = (
    "first stage: cosine = the store's embeddings; self = the method's own space (pairwise "
    "baselines on a store without a joint space). Runs whose store offers no first stage "
    "for the method are counted as skipped."
)
NO_FULL_GALLERY = "No run carries the full-gallery protocol (`protocol=full_gallery`)."


def full_gallery_table(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), construction: str = ""
) -> dict[str, Any] | None:
    """The full-gallery protocol table, format-free: ``{"caption", "head", "body", "note"}``
    (``body``: cell lists, one per row of :func:`table` labelled with the first stage and K, then
    the first stage alone, no re-ranking); None when no run carries the protocol."""
    fg = full_gallery_rows(rows, ks)
    if not fg:
        return None
    synthetic = any(rows[n]["synthetic"] for n in fg)
    caption = _with(("SYNTHETIC data. " if synthetic else "") + FULL_GALLERY_CAPTION, construction)
    head = ["method", "runs", "first stage", "K"]

    def cells(row: dict[str, Any], tag: str) -> list[str]:
        out = []
        for d in TABLE_ORDER:
            for k in ks:
                ms = row.get(f"{d}/{tag}R@{k}")
                out.append(f"{ms[0]:.2f} ± {ms[1]:.2f}" if ms else "—")
        return out

    body = []
    first_rows: dict[str, dict[str, Any]] = {}
    for name, row in fg.items():
        runs = str(row["n"]) + (f" ({row['skipped']} skipped)" if row["skipped"] else "")
        stage = "/".join(row["first_stage"]) or "—"
        k_cell = "/".join(str(k) for k in row["top_k"]) or "—"
        body.append([name, runs, stage, k_cell, *cells(row, "")])
        if row["n"]:
            store = str(((rows[name]["runs"] or [{}])[0].get("store") or {}).get("path"))
            first_rows.setdefault(f"{stage}\t{store}", row)
    stores = {key.split("\t")[1] for key in first_rows}
    for key, row in first_rows.items():
        stage, store = key.split("\t")
        if stage != "self":  # a model's own first stage is that model's row already
            where = f", {Path(store).name}" if len(stores) > 1 else ""
            label = f"first stage alone ({stage}{where}, no re-ranking)"
            body.append([label, str(row["n"]), stage, "—", *cells(row, "first/")])
    return {"caption": caption, "head": head, "body": body, "note": FULL_GALLERY_NOTE}


def full_gallery_markdown(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), construction: str = ""
) -> str:
    """The full-gallery protocol table (Markdown) of :func:`full_gallery_table`."""
    fg = full_gallery_table(rows, ks, construction)
    if fg is None:
        return NO_FULL_GALLERY + "\n"
    head = fg["head"] + [f"{column_heading(d)} R@{k}" for d in TABLE_ORDER for k in ks]
    lines = [fg["caption"], "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in fg["body"]]
    lines += ["", fg["note"]]
    return "\n".join(lines) + "\n"


def full_gallery_latex(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), construction: str = ""
) -> str:
    """The full-gallery protocol table as a LaTeX ``table`` (booktabs), label
    ``tab:xmr-full-gallery``; empty when no run carries the protocol."""
    fg = full_gallery_table(rows, ks, construction)
    if fg is None:
        return ""
    n = len(ks)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _tex(fg["caption"]) + "}",
        r"\label{tab:xmr-full-gallery}",
        r"\begin{tabular}{l r l r " + " ".join(["r" * n] * len(TABLE_ORDER)) + "}",
        r"\toprule",
        " & & & & "
        + " & ".join(
            rf"\multicolumn{{{n}}}{{c}}{{{_tex(direction_heading(d))}}}" for d in TABLE_ORDER
        )
        + r" \\",
        "Method & Runs & First stage & K & "
        + " & ".join(f"R@{k}" for _ in TABLE_ORDER for k in ks)
        + r" \\",
        r"\midrule",
    ]
    for cells in fg["body"]:
        name = cells[0]
        method = rows[name]["method"] if name in rows else ""
        label = DISPLAY.get(method, method) + name[len(method) :] if method else name
        values = [
            "$" + c.replace(" ± ", r" \pm ") + "$" if "±" in c else _tex(c) for c in cells[4:]
        ]
        lines.append(" & ".join([_tex(label), *(_tex(c) for c in cells[1:4]), *values]) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        *_tex_notes([fg["note"]]),
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def significance_caption(k: int = 1, n_resamples: int = N_RESAMPLES, seed: int = 0) -> str:
    """The significance table's caption: the test, its resamples and seed, the correction."""
    return (
        f"Δ R@{k} vs CLIP cosine (percent points) on the same test queries, in both protocols "
        "(full gallery: hit@1 of the re-ranked gallery; lists: R@1 inside the candidate lists), "
        "and, for every row that re-ranks, vs its own first stage (full gallery, same run: the "
        "re-ranked order against the first stage's order it started from; "
        "`reranker_listnet@infonce` against the InfoNCE model of the same seed): "
        f"paired bootstrap over queries, {n_resamples:,} resamples (seed {seed}); 95% percentile "
        "interval; two-sided p, and Holm–Bonferroni's adjusted p over every (protocol, method, "
        f"direction) test of the table (level {ALPHA}). 'pooled' averages each query's R@1 over "
        "the seeds first; per-seed rows are in significance.csv. The test reflects query "
        "sampling, not seed variance."
    )


def significance_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the summary shows (:func:`xmr.report.significance.family`, full gallery
    first), each with ``seeds``: how many seeds it covers."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for rec in records:
        if rec["seed"] != "pooled":
            counts[(rec["protocol"], rec["row"], rec["direction"])] += 1
    shown = family(records)
    order = {p: i for i, p in enumerate(PROTOCOL_TITLES)}
    shown = sorted(shown, key=lambda r: order.get(r["protocol"], len(order)))  # stable
    return [
        {**rec, "seeds": counts[(rec["protocol"], rec["row"], rec["direction"])]} for rec in shown
    ]


#: Said when no run (the baseline included) wrote the full gallery's per-query outcomes.
NO_FULL_TEST = (
    "Full gallery: not tested — no run names per-query full-gallery outcomes "
    "(predictions_full_{t2i,i2t}.npz under results.json `predictions`, written when a run is "
    "tested with protocol=full_gallery)."
)


def full_test_note(records: list[dict[str, Any]]) -> str:
    """:data:`NO_FULL_TEST` when no record is of the full-gallery protocol, else ``""``."""
    return "" if any(r["protocol"] == "full_gallery" for r in records) else NO_FULL_TEST


def significance_markdown(records: list[dict[str, Any]], k: int = 1, **caption: Any) -> str:
    """Summary table: one line per (protocol, row, direction) — pooled when there are several
    seeds — full gallery first; raw and Holm-adjusted p."""
    if not records:
        return "No CLIP-cosine baseline with predictions files: no significance test.\n"
    lines = [
        significance_caption(k, **caption),
        "",
        f"| protocol | method | direction | seeds | Δ R@{k} | 95% interval | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in significance_table(records):
        protocol = PROTOCOL_TITLES.get(rec["protocol"], rec["protocol"])
        if rec["note"]:
            lines.append(
                f"| {protocol} | {rec['row']} | {rec['direction']} | — | — | — | {rec['note']} | — |"
            )
            continue
        lines.append(
            f"| {protocol} | {rec['row']} | {rec['direction']} | {rec['seeds']} | "
            f"{rec['delta']:+.2f} | [{rec['low']:+.2f}, {rec['high']:+.2f}] | "
            f"{format_p(rec['p'])} | {format_p(rec['p_holm'])} |"
        )
    note = full_test_note(records)
    return "\n".join(lines + (["", note] if note else [])) + "\n"


def gain_markdown(warnings: list[str]) -> str:
    """The in-list-vs-full-gallery rule and its WARNING lines (or that none fired)."""
    lines = [
        f"In-list gains vs the full gallery. {GAIN_RULE}",
        *(warnings or ["No method is flagged."]),
    ]
    return "\n\n".join(lines) + "\n"


def significance_csv(records: list[dict[str, Any]]) -> str:
    """``significance.csv``: every record (per seed and pooled) of both protocols, one line each;
    ``p_holm`` is set on the records the report shows (empty on the others)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = [
        "protocol",
        "row",
        "direction",
        "seed",
        "delta",
        "low",
        "high",
        "p",
        "p_holm",
        "queries",
        "note",
    ]
    writer.writerow(cols)

    def cell(value: Any, col: str) -> Any:
        if not isinstance(value, float):
            return value
        return "" if col == "p_holm" and not math.isfinite(value) else f"{value:.6g}"

    for rec in records:
        writer.writerow([cell(rec[c], c) for c in cols])
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


def probe_markdown(report: Report) -> str:
    """The leakage probe of the list-protocol table's lists, and its WARNING lines."""
    lines = report.probe_lines or ["No lists directory named by the runs' configs: no probe."]
    return "\n".join(lines + ([""] + report.probe_warnings if report.probe_warnings else [])) + "\n"


def report_markdown(report: Report) -> str:
    """``table.md``: the full-gallery table, the list-protocol table (Table 2) with its lists'
    leakage probe, the significance of both protocols with the in-list gain warnings, and the
    failed / missing jobs."""
    return "\n".join(
        [
            "# xmr report" + (" — SYNTHETIC data" if report.synthetic else ""),
            "",
            f"Runs below `{report.root}`.",
            "",
            "## Full-gallery protocol",
            "",
            full_gallery_markdown(report.rows, report.ks, report.full_construction),
            "## List protocol (Table 2)",
            "",
            to_markdown(report.rows, report.ks, report.recall, report.list_construction),
            probe_markdown(report),
            "## Significance vs CLIP cosine",
            "",
            significance_markdown(
                report.significance, n_resamples=report.n_resamples, seed=report.seed
            ),
            gain_markdown(report.gain_warnings),
            "## Failed / missing jobs",
            "",
            unfinished_markdown(report.unfinished),
        ]
    )


def report_latex(report: Report) -> str:
    """``table.tex``: the full-gallery table, then the list-protocol table (Table 2) with the
    leakage probe and every WARNING line below it."""
    notes = report.probe_lines + report.probe_warnings + report.gain_warnings
    return full_gallery_latex(report.rows, report.ks, report.full_construction) + to_latex(
        report.rows, report.ks, report.recall, report.list_construction, notes
    )
