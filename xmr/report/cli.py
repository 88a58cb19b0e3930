"""Collect a sweep's runs into the paper's Table 2, a significance test, plots and an HTML page.

    xmr report logs/demo                          # writes beside the runs (ROOT)
    xmr report logs/sweeps/loss_seeds/synthetic_paper --out reports/paper --images DIR

The tables (:mod:`xmr.report.table`), the full-gallery protocol first (it cannot be gamed by
how lists are built), then the list protocol (the paper's Table 2): rows are methods, columns
text retrieval (i→t) and image retrieval (t→i) R@1/5/10 as mean ± sample std over the runs
(seeds) of a row, in percent; ``--recall found`` asks for the paper's found/total instead of
hit@K inside the lists, and the caption says which. Each caption states the table's
construction (:mod:`xmr.report.construction`); the list-protocol table is followed by the
leakage probe of its lists. Significance (:mod:`xmr.report.significance`): a paired bootstrap
over test queries against the CLIP-cosine baseline in both protocols and, in the full gallery,
of every re-ranking row against its own first stage (seeds averaged per query), Holm-adjusted
across the table, and a WARNING for every in-list gain the full gallery does not match. Jobs that failed
or never finished (:mod:`xmr.report.collect`) are listed in a section of their own and counted
in the ``runs`` column (``4 of 5``). WARNING lines are also written to stderr.

Files written to ``--out`` (default ROOT): ``table.md`` (tables, probe, significance,
failed/missing jobs), ``table.csv`` (both protocols, one line per row), ``table.tex`` (both
tables), ``significance.csv``, ``recall_at_k.png``, ``validation_curves.png`` and
``report.html`` (self-contained, see :mod:`xmr.report.html`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from xmr.report.collect import collect, collect_unfinished
from xmr.report.construction import full_construction, list_construction, probe_lines, probes
from xmr.report.curves import CURVE_MAX_K, histories, recall_curves
from xmr.report.html import write_html
from xmr.report.options import report_parser
from xmr.report.plots import plot_recall_curves, plot_validation_curves
from xmr.report.render import report_latex, report_markdown, significance_csv, to_csv
from xmr.report.significance import (
    N_RESAMPLES,
    adjust_holm,
    first_stage_significance,
    full_gallery_significance,
    gain_warnings,
    significance,
)
from xmr.report.table import Report, full_gallery_deltas, recall_definition, table
from xmr.utils.io import atomic_write_text


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
    records = adjust_holm(
        full_gallery_significance(rows, 1, n_resamples, seed)
        + first_stage_significance(rows, 1, n_resamples, seed)
        + significance(rows, 1, recall, n_resamples, seed)
    )
    lines, probe_warnings = probe_lines(probes(rows))
    return Report(
        root=root,
        recall=recall,
        ks=ks,
        runs=runs,
        unfinished=unfinished,
        rows=rows,
        significance=records,
        full_construction=full_construction(rows),
        list_construction=list_construction(rows),
        probe_lines=lines,
        probe_warnings=probe_warnings,
        gain_warnings=gain_warnings(records, full_gallery_deltas(rows)),
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
        "table.md": atomic_write_text(out / "table.md", report_markdown(report)),
        "table.csv": atomic_write_text(
            out / "table.csv", to_csv(report.rows, report.ks, report.recall)
        ),
        "table.tex": atomic_write_text(out / "table.tex", report_latex(report)),
        "significance.csv": atomic_write_text(
            out / "significance.csv", significance_csv(report.significance)
        ),
    }
    if plots:
        if report.curves:
            written["recall_at_k.png"] = plot_recall_curves(
                report.curves, out / "recall_at_k.png", report.recall, report.synthetic
            )
        if report.histories:
            written["validation_curves.png"] = plot_validation_curves(
                report.histories, out / "validation_curves.png", report.synthetic
            )
    if html:
        written["report.html"] = write_html(
            report, out / "report.html", images=images, plots=written, gallery=gallery
        )
    return written


def main(argv: list[str] | None = None) -> None:
    """``xmr report ROOT [--out DIR] [--recall found] [--images DIR] ...`` (see ``--help``)."""
    parser = report_parser()
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
    print(report_markdown(report))
    for path in written.values():
        print(f"wrote {path}")
    for line in report.warnings:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
