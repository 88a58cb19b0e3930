"""Renderers of the report's tables: Markdown (``table.md``), CSV and LaTeX, with their captions.

:func:`report_markdown` is ``table.md`` and :func:`report_latex` ``table.tex``: the full-gallery
protocol table first (it cannot be gamed), then the list-protocol table (Table 2) with the
leakage probe of its lists, each captioned with its construction; the significance of both
protocols (Holm-adjusted) with the in-list-vs-full-gallery warnings; the failed / missing jobs.
:func:`to_csv` is ``table.csv``: one line per row holding both protocols' values.

Both tables are built once, format-free (:func:`list_table`, :func:`full_gallery_table`): the
same rows in the same order (CLIP cosine first), the same row names, and the same
:class:`Value` cells — mean ± sample std, ``—`` in place of the std when a row has one run, and
the best value of each column (:func:`xmr.report.table.best_flags`: ties all best, CLIP cosine
included) marked — which Markdown, LaTeX (``\\textbf``) and ``report.html`` (``<strong>``) only
format.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from xmr.data.store import DIRECTION_TITLES, TABLE_ORDER
from xmr.report.significance import (
    ALPHA,
    DEFAULT_TEST,
    GAIN_RULE,
    N_RESAMPLES,
    PROTOCOL_TITLES,
    describe_test,
    family,
    format_p,
)
from xmr.report.table import DECIMALS, Report, best_flags, full_gallery_rows, recall_definition


@dataclass(frozen=True)
class Value:
    """A value cell of a table: ``mean`` and sample ``std`` in percent (``std`` NaN: the row has
    one run) and whether it is the best of its column."""

    mean: float
    std: float
    best: bool = False


#: A table cell: text, a value, or None (no value: ``—``).
Cell = Union[str, Value, None]  # noqa: UP007 (a runtime alias; ``X | Y`` of a str fails on 3.10)

#: What a table says of its bold cells and of ``—`` in place of the std.
VALUE_NOTE = (
    "— in place of ± std: the row has one run. Bold (LaTeX, HTML): the best mean of each column "
    "at the shown precision, ties all bold, CLIP cosine included."
)


def value_text(cell: Cell) -> str:
    """A cell as text: ``50.00 ± 3.54``; ``50.00 —`` for one run; ``—`` for no value."""
    if cell is None:
        return "—"
    if isinstance(cell, str):
        return cell
    mean = f"{cell.mean:.{DECIMALS}f}"
    return f"{mean} —" if not math.isfinite(cell.std) else f"{mean} ± {cell.std:.{DECIMALS}f}"


def _values(cells: list[list[Cell]], best_of: list[bool] | None = None) -> list[list[Cell]]:
    """``cells`` with each column's :class:`Value` cells marked best (:func:`best_flags`) among
    the rows where ``best_of`` is True (default: every row)."""
    best_of = best_of or [True] * len(cells)
    out = [list(row) for row in cells]
    width = max((len(row) for row in cells), default=0)
    for j in range(width):
        column = [
            (c.mean, c.std) if ok and isinstance(c := row[j], Value) else None
            for row, ok in zip(cells, best_of, strict=True)
        ]
        if not any(isinstance(row[j], Value) for row in cells):
            continue
        for row, flag in zip(out, best_flags(column), strict=True):
            if flag and isinstance(row[j], Value):
                row[j] = Value(row[j].mean, row[j].std, best=True)
    return out


def _value(ms: tuple[float, float] | None) -> Value | None:
    return Value(ms[0], ms[1]) if ms else None


def direction_heading(direction: str) -> str:
    """A direction's column-group heading: ``Text retrieval (i→t)``, ``Image retrieval (t→i)``."""
    return (
        f"{DIRECTION_TITLES[direction].split(' (')[0].capitalize()} ({direction.replace('2', '→')})"
    )


def column_heading(direction: str) -> str:
    """A direction's short column prefix in Markdown: ``text retr. (i2t)``."""
    return f"{DIRECTION_TITLES[direction].split()[0]} retr. ({direction})"


def table_caption(rows: dict[str, dict[str, Any]], recall: str) -> str:
    """Table 2's caption: SYNTHETIC, the protocol, what the values are, the recall definition."""
    synthetic = any(r["synthetic"] for r in rows.values())
    return (
        ("SYNTHETIC data (a generated store, not real images or captions). " if synthetic else "")
        + "List protocol: Recall@K (%), mean ± sample std over runs (seeds), inside the candidate "
        + f"lists; recall = {recall_definition(recall)}. runs = finished runs (of all jobs, when "
        + f"some failed or are missing). {VALUE_NOTE}"
    )


def runs_cell(row: dict[str, Any]) -> str:
    """A row's ``runs`` cell: finished runs, ``"4 of 5"`` when some jobs failed or are missing."""
    return str(row["n"]) if row["jobs"] == row["n"] else f"{row['n']} of {row['jobs']}"


def _with(caption: str, construction: str) -> str:
    return f"{caption} {construction}" if construction else caption


#: Under the list-protocol table.
DIRECTIONS_NOTE = (
    "i2t = text retrieval (image query → captions); t2i = image retrieval (caption query → images)."
)


def list_table(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    construction: str = "",
) -> dict[str, Any]:
    """The list-protocol table (Table 2), format-free: ``{"caption", "head", "body", "note"}``
    (``head``: the text columns; ``body``: per row of :func:`xmr.report.table.table`, its name,
    runs cell and one :class:`Value` (or None) per direction and K, best ones marked)."""
    body: list[list[Cell]] = [
        [name, runs_cell(row), *(_value(row.get(f"{d}/R@{k}")) for d in TABLE_ORDER for k in ks)]
        for name, row in rows.items()
    ]
    return {
        "caption": _with(table_caption(rows, recall), construction),
        "head": ["method", "runs"],
        "body": _values(body),
        "note": DIRECTIONS_NOTE,
    }


def _markdown(model: dict[str, Any], ks: tuple[int, ...]) -> str:
    head = model["head"] + [f"{column_heading(d)} R@{k}" for d in TABLE_ORDER for k in ks]
    lines = [model["caption"], "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(value_text(c) for c in cells) + " |" for cells in model["body"]]
    lines += ["", model["note"]]
    return "\n".join(lines) + "\n"


def to_markdown(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    construction: str = "",
) -> str:
    """Table 2 as Markdown: caption (with ``construction``), header, one line per row."""
    return _markdown(list_table(rows, ks, recall, construction), ks)


def _csv_pair(ms: tuple[float, float] | None) -> list[str]:
    """``[mean, std]`` cells (4 decimals); the std empty for one run, both empty for none."""
    if not ms:
        return ["", ""]
    return [f"{ms[0]:.4f}", f"{ms[1]:.4f}" if math.isfinite(ms[1]) else ""]


def to_csv(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), recall: str = "hit"
) -> str:
    """One line per row (the tables' rows and order) holding both protocols: row, method, runs,
    jobs, failed, missing, seeds, synthetic, recall, then the list protocol's
    ``{dir}_R@{k}_mean`` / ``_std`` (percent; the std empty for one run), then the full-gallery
    protocol's ``full_runs``, ``full_first_stage``, ``full_top_k``, ``full_{dir}_R@{k}_mean`` /
    ``_std`` and the first stage alone's ``full_first_{dir}_R@{k}_mean`` / ``_std`` (empty when
    absent)."""
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
        values = [c for d in TABLE_ORDER for k in ks for c in _csv_pair(row.get(f"{d}/R@{k}"))]
        full = fg.get(name, {})
        full_values = [
            full.get("n", ""),
            " ".join(full.get("first_stage", [])),
            " ".join(str(k) for k in full.get("top_k", [])),
        ]
        for tag in ("", "first/"):
            for d in TABLE_ORDER:
                for k in ks:
                    full_values += _csv_pair(full.get(f"{d}/{tag}R@{k}"))
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


def _tex_cell(cell: Cell) -> str:
    """A cell in LaTeX: :func:`value_text` escaped, ``\\textbf`` when it is a best value."""
    text = _tex(value_text(cell))
    return rf"\textbf{{{text}}}" if isinstance(cell, Value) and cell.best else text


def _latex(model: dict[str, Any], ks: tuple[int, ...], label: str, notes: list[str]) -> str:
    n = len(ks)
    texts = len(model["head"])
    align = {"runs": "r", "K": "r"}
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _tex(model["caption"]) + "}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{"
        + " ".join(align.get(h, "l") for h in model["head"])
        + " "
        + " ".join(["r" * n] * len(TABLE_ORDER))
        + "}",
        r"\toprule",
        " & " * texts
        + " & ".join(
            rf"\multicolumn{{{n}}}{{c}}{{{_tex(direction_heading(d))}}}" for d in TABLE_ORDER
        )
        + r" \\",
        " & ".join(_tex(h[0].upper() + h[1:]) for h in model["head"])
        + " & "
        + " & ".join(f"R@{k}" for _ in TABLE_ORDER for k in ks)
        + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_tex_cell(c) for c in cells) + r" \\" for cells in model["body"]]
    lines += [r"\bottomrule", r"\end{tabular}", *_tex_notes(notes), r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_latex(
    rows: dict[str, dict[str, Any]],
    ks: tuple[int, ...] = (1, 5, 10),
    recall: str = "hit",
    construction: str = "",
    notes: list[str] | None = None,
) -> str:
    """Table 2 as a LaTeX ``table`` (booktabs), label ``tab:xmr-table2``, the caption stating
    recall, SYNTHETIC and the ``construction``; ``notes`` (probe and WARNING lines) follow the
    tabular."""
    return _latex(list_table(rows, ks, recall, construction), ks, "tab:xmr-table2", notes or [])


def _tex_notes(notes: list[str] | None) -> list[str]:
    """Note lines below a tabular (inside its ``table``), one paragraph each."""
    return [r"\par\smallskip{\footnotesize " + _tex(n.replace("`", "")) + "}" for n in notes or []]


#: The full-gallery table's caption (after "SYNTHETIC data. " when it applies).
FULL_GALLERY_CAPTION = (
    "Full-gallery protocol: a first stage ranks the whole test gallery (t2i: all test "
    "images; i2t: all test captions), the method re-ranks the first stage's top K, Recall@K "
    "(%, mean ± sample std over runs) over that ranking; recall = "
    + recall_definition("hit")
    + "; a query whose positives fall outside the top K is a miss (positives are never "
    "inserted), so no list construction can favour a method. Not comparable with the "
    "list-protocol table below, whose lists always hold the positive. " + VALUE_NOTE
)
FULL_GALLERY_NOTE = (
    "first stage: cosine = the store's embeddings; self = the method's own space (pairwise "
    "baselines on a store without a joint space). Runs whose store offers no first stage "
    "for the method are counted as skipped. The 'first stage alone' rows are references, not "
    "counted for the bold best values."
)
NO_FULL_GALLERY = "No run carries the full-gallery protocol (`protocol=full_gallery`)."


def full_gallery_table(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), construction: str = ""
) -> dict[str, Any] | None:
    """The full-gallery protocol table, format-free: ``{"caption", "head", "body", "note"}``
    (``body``: cell lists, one per row of :func:`table` labelled with the first stage and K, then
    the first stage alone, no re-ranking; :class:`Value` cells, the best of each column among the
    method rows marked); None when no run carries the protocol."""
    fg = full_gallery_rows(rows, ks)
    if not fg:
        return None
    synthetic = any(rows[n]["synthetic"] for n in fg)
    caption = _with(("SYNTHETIC data. " if synthetic else "") + FULL_GALLERY_CAPTION, construction)
    head = ["method", "runs", "first stage", "K"]

    def cells(row: dict[str, Any], tag: str) -> list[Cell]:
        return [_value(row.get(f"{d}/{tag}R@{k}")) for d in TABLE_ORDER for k in ks]

    body: list[list[Cell]] = []
    first_rows: dict[str, dict[str, Any]] = {}
    for name, row in fg.items():
        runs = str(row["n"]) + (f" ({row['skipped']} skipped)" if row["skipped"] else "")
        stage = "/".join(row["first_stage"]) or "—"
        k_cell = "/".join(str(k) for k in row["top_k"]) or "—"
        body.append([name, runs, stage, k_cell, *cells(row, "")])
        if row["n"]:
            store = str(((rows[name]["runs"] or [{}])[0].get("store") or {}).get("path"))
            first_rows.setdefault(f"{stage}\t{store}", row)
    methods = len(body)
    stores = {key.split("\t")[1] for key in first_rows}
    for key, row in first_rows.items():
        stage, store = key.split("\t")
        if stage != "self":  # a model's own first stage is that model's row already
            where = f", {Path(store).name}" if len(stores) > 1 else ""
            label = f"first stage alone ({stage}{where}, no re-ranking)"
            body.append([label, str(row["n"]), stage, "—", *cells(row, "first/")])
    best_of = [i < methods for i in range(len(body))]
    return {
        "caption": caption,
        "head": head,
        "body": _values(body, best_of),
        "note": FULL_GALLERY_NOTE,
    }


def full_gallery_markdown(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), construction: str = ""
) -> str:
    """The full-gallery protocol table (Markdown) of :func:`full_gallery_table`."""
    fg = full_gallery_table(rows, ks, construction)
    return NO_FULL_GALLERY + "\n" if fg is None else _markdown(fg, ks)


def full_gallery_latex(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), construction: str = ""
) -> str:
    """The full-gallery protocol table as a LaTeX ``table`` (booktabs), label
    ``tab:xmr-full-gallery``; empty when no run carries the protocol."""
    fg = full_gallery_table(rows, ks, construction)
    return "" if fg is None else _latex(fg, ks, "tab:xmr-full-gallery", [fg["note"]])


def significance_caption(
    k: int = 1, n_resamples: int = N_RESAMPLES, seed: int = 0, test: str = DEFAULT_TEST
) -> str:
    """The significance table's caption: the test, its resamples and seed, the correction."""
    return (
        f"Δ R@{k} vs CLIP cosine (percent points) on the same test queries, in both protocols "
        "(full gallery: hit@1 of the re-ranked gallery; lists: R@1 inside the candidate lists), "
        "and, for every row that re-ranks, vs its own first stage (full gallery, same run: the "
        "re-ranked order against the first stage's order it started from; "
        "`reranker_listnet@infonce` against the InfoNCE model of the same seed): "
        f"{describe_test(test, n_resamples, seed)}; two-sided p, and Holm–Bonferroni's "
        "adjusted p over every (protocol, method, direction) test of the table (level "
        f"{ALPHA}). 'pooled' averages each query's R@1 over the seeds first; per-seed rows are "
        "in significance.csv. The test reflects query sampling, not seed variance."
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


def comparison_markdown(
    records: list[dict[str, Any]],
    name: str,
    base_name: str,
    k: int = 1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    test: str = DEFAULT_TEST,
) -> str:
    """``xmr report --compare A B``: the records of
    :func:`xmr.report.significance.compare_rows`, one line per (protocol, direction)."""
    lines = [
        f"{name} vs {base_name}: Δ R@{k} = {name} − {base_name} (percent points) on the same "
        "test queries, full gallery (hit@1 of the re-ranked gallery, predictions_full_*.npz) "
        "and lists (R@1 inside the candidate lists, predictions_*.npz); per query, each row's "
        f"values averaged over its seeds first; {describe_test(test, n_resamples, seed)}; "
        "two-sided p, and Holm–Bonferroni's adjusted p over the tests below.",
        "",
        f"| protocol | direction | seeds | queries | Δ R@{k} | 95% interval | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in significance_table(records):
        protocol = PROTOCOL_TITLES.get(rec["protocol"], rec["protocol"])
        if rec["note"]:
            lines.append(f"| {protocol} | {rec['direction']} | — | — | — | — | {rec['note']} | — |")
            continue
        lines.append(
            f"| {protocol} | {rec['direction']} | {rec['seeds']} | {rec['queries']} | "
            f"{rec['delta']:+.2f} | [{rec['low']:+.2f}, {rec['high']:+.2f}] | "
            f"{format_p(rec['p'])} | {format_p(rec['p_holm'])} |"
        )
    if not records:
        lines.append("| — | — | — | — | — | — | no outcomes of both rows to pair | — |")
    return "\n".join(lines) + "\n"


def gain_markdown(warnings: list[str]) -> str:
    """The in-list-vs-full-gallery rule and its WARNING lines (or that none fired)."""
    lines = [
        f"In-list gains vs the full gallery. {GAIN_RULE}",
        *(warnings or ["No method is flagged."]),
    ]
    return "\n\n".join(lines) + "\n"


def significance_csv(records: list[dict[str, Any]]) -> str:
    """``significance.csv``: every record (per seed and pooled) of both protocols, one line each
    (``base``: the row it is tested against, or ``first stage``); ``p_holm`` is set on the
    records the report shows (empty on the others)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = [
        "protocol",
        "row",
        "base",
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
            f"Runs below `{report.root}`."
            + (f" {report.baseline_note}" if report.baseline_note else ""),
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
                report.significance,
                n_resamples=report.n_resamples,
                seed=report.seed,
                test=report.test,
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
