"""Collect a sweep's runs into the paper's Table 2, a significance test, plots and an HTML page.

    xmr report logs/demo                          # writes beside the runs (ROOT)
    xmr report logs/sweeps/loss_seeds/synthetic_paper --out reports/paper --images DIR

The tables (:mod:`xmr.report.table`), the full-gallery protocol first (it cannot be gamed by
how lists are built), then the list protocol (the paper's Table 2): rows are methods (CLIP
cosine first; the same names in every file; ``—`` for the std of a one-run row; the best value
of each column bold in LaTeX and HTML), columns
text retrieval (i→t) and image retrieval (t→i) R@1/5/10 as mean ± sample std over the runs
(seeds) of a row, in percent; ``--recall found`` asks for the paper's found/total instead of
hit@K inside the lists, and the caption says which. Each caption states the table's
construction (:mod:`xmr.report.construction`); the list-protocol table is followed by the
leakage probe of its lists. Significance (:mod:`xmr.report.significance`): a paired test over
test queries (``--test permutation``, the default: the sign-flip randomisation test; or
``--test bootstrap``) against the CLIP-cosine baseline in both protocols and, in the full
gallery, of every re-ranking row against its own first stage (seeds averaged per query),
Holm-adjusted across the table, and a WARNING for every in-list gain the full gallery does not
match. ``--compare A B`` prints the paired test of row A against row B in both protocols (seeds
averaged per query) and writes nothing. Jobs that failed
or never finished (:mod:`xmr.report.collect`) are listed in a section of their own and counted
in the ``runs`` column (``4 of 5``). WARNING lines are also written to stderr.

CLIP cosine is always there: when no run below ROOT is a ``model=cosine`` run, the report
evaluates it on the runs' store and test lists, in both protocols, into ``OUT/clip_cosine``
(exactly what such a run records; :mod:`xmr.report.baseline`) and says so under the title;
``--no-baseline`` leaves it out.

Files written to ``--out`` (default ROOT): ``table.md`` (tables, probe, significance,
failed/missing jobs), ``table.csv`` (both protocols, one line per row), ``table.tex`` (both
tables), ``significance.csv``, ``recall_at_k.png``, ``validation_curves.png`` and
``report.html`` (self-contained, see :mod:`xmr.report.html`). The command prints ``table.md``,
then a few summary lines (:mod:`xmr.report.summary`): what it wrote, the runs it read, and the
best full-gallery row against CLIP cosine.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from xmr.report.baseline import ensure_baseline
from xmr.report.collect import collect, collect_unfinished
from xmr.report.construction import full_construction, list_construction, probe_lines, probes
from xmr.report.curves import CURVE_MAX_K, baseline_reference, histories, recall_curves
from xmr.report.html import write_html
from xmr.report.options import report_parser
from xmr.report.plots import plot_recall_curves, plot_validation_curves
from xmr.report.render import (
    comparison_markdown,
    report_latex,
    report_markdown,
    significance_csv,
    to_csv,
)
from xmr.report.significance import (
    DEFAULT_TEST,
    N_RESAMPLES,
    TESTS,
    adjust_holm,
    compare_rows,
    first_stage_significance,
    full_gallery_significance,
    gain_warnings,
    significance,
)
from xmr.report.summary import summary_lines
from xmr.report.table import Report, full_gallery_deltas, recall_definition, table
from xmr.utils.console import quiet_library_noise
from xmr.utils.io import atomic_write_text


def collect_jobs(root: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished runs, failed / missing jobs) below ``root``; raises FileNotFoundError when it
    holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (give a sweep's output directory)")
    runs = collect(root)
    unfinished = collect_unfinished(root)
    if not runs and not unfinished:
        raise FileNotFoundError(f"{root}: no results.json (and no job directories) below it")
    return runs, unfinished


def load_rows(
    root: str | Path, recall: str = "hit", ks: tuple[int, ...] = (1, 5, 10)
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(finished runs, failed / missing jobs, table rows) of the sweep below ``root``."""
    recall_definition(recall)
    runs, unfinished = collect_jobs(root)
    return runs, unfinished, table(runs, ks, recall, unfinished)


def build_report(
    root: str | Path,
    recall: str = "hit",
    ks: tuple[int, ...] = (1, 5, 10),
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    test: str = DEFAULT_TEST,
    baseline_out: str | Path | None = None,
) -> Report:
    """Collect the runs below ``root`` and derive the table, significance (the paired ``test``),
    curves, histories. ``baseline_out``: when no run is CLIP cosine, evaluate it into
    ``<baseline_out>/clip_cosine`` (:func:`xmr.report.baseline.ensure_baseline`; ``xmr report``
    passes ``--out``); None evaluates nothing."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}: one of {', '.join(TESTS)}")
    recall_definition(recall)
    root = Path(root)
    runs, unfinished = collect_jobs(root)
    note = ""
    if baseline_out is not None:
        baseline = ensure_baseline(runs, baseline_out)
        runs, note = baseline.runs, baseline.note
    rows = table(runs, ks, recall, unfinished)
    records = adjust_holm(
        full_gallery_significance(rows, 1, n_resamples, seed, test)
        + first_stage_significance(rows, 1, n_resamples, seed, test)
        + significance(rows, 1, recall, n_resamples, seed, test)
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
        val_reference=baseline_reference(rows),
        n_resamples=n_resamples,
        seed=seed,
        test=test,
        baseline_note=note,
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
                report.curves,
                out / "recall_at_k.png",
                report.recall,
                report.synthetic,
                order=list(report.rows),
            )
        if report.histories:
            written["validation_curves.png"] = plot_validation_curves(
                report.histories,
                out / "validation_curves.png",
                report.synthetic,
                reference=report.val_reference,
                order=list(report.rows),
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
    quiet_library_noise()
    test = {"n_resamples": args.resamples, "seed": args.seed, "test": args.test}
    try:
        if args.compare:
            _, _, rows = load_rows(args.root, args.recall)
            records = compare_rows(rows, *args.compare, recall=args.recall, **test)
            print(comparison_markdown(records, *args.compare, **test))
            return
        out = args.out or args.root
        baseline_out = None if args.no_baseline else out
        report = build_report(args.root, args.recall, **test, baseline_out=baseline_out)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise SystemExit(f"xmr report: {err.args[0] if err.args else err}") from err
    written = write_report(
        report,
        out,
        images=args.images,
        plots=not args.no_plots,
        html=not args.no_html,
        gallery=args.gallery,
    )
    print(report_markdown(report))
    for line in report.warnings:
        print(line, file=sys.stderr)
    print("\n".join(summary_lines(report, written)), flush=True)


if __name__ == "__main__":
    main()
