"""``xmr report``: a sweep's runs into Table 2, a significance test, plots and an HTML page.

Modules, each imported only by those after it: :mod:`~xmr.report.collect` (runs, failed and
missing jobs, rows), :mod:`~xmr.report.table` (Table 2's rows, the full-gallery rows,
:class:`~xmr.report.table.Report`), :mod:`~xmr.report.baseline` (CLIP cosine evaluated when
no run is it), :mod:`~xmr.report.significance` (paired tests against CLIP cosine),
:mod:`~xmr.report.curves` (what the plots draw), :mod:`~xmr.report.render` (Markdown, CSV,
LaTeX), :mod:`~xmr.report.plots` (PNG), :mod:`~xmr.report.html` (``report.html``),
:mod:`~xmr.report.summary` (the lines the command ends with) and :mod:`~xmr.report.cli` (the
command).
"""
