# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # xmr: analysis of a sweep
#
# Reads the **runs root** of a sweep — the directory `xmr report ROOT` takes, holding every
# job's `results.json`, `predictions_*.npz` and `metrics.jsonl` below it (not a report that
# `xmr report --out` wrote) — and shows
#
# 1. the full-gallery table, Table 2 (list protocol, mean ± std over seeds) with the leakage
#    probe of its lists, and the significance test against CLIP cosine on both protocols,
# 2. Recall@K curves (K = 1..50) per method and direction,
# 3. a per-query error analysis: the test queries where the best ranker **fixes** CLIP
#    cosine's top-1 (cosine wrong, ranker right) or **breaks** it (cosine right, ranker wrong),
#    with the caption text.
#
# Environment: `XMR_RUNS_ROOT` = the runs root (default: the demo's `logs/demo`),
# `XMR_NOTEBOOK_OUT` = where its plots go (default: the runs root), `XMR_RESAMPLES` = resamples
# of the significance test (default 10,000).
#
# This file is a jupytext percent-format notebook. `python notebooks/run.py RUNS_ROOT --out DIR`
# executes it as a notebook (jupytext → nbformat → nbclient, an ipykernel kernel of the same
# Python; needs the `dev` extra) and saves `DIR/analysis.ipynb` with its outputs: tables
# rendered from Markdown, plots inline. `jupytext --to ipynb notebooks/analysis.py` makes an
# unexecuted `.ipynb` to open in Jupyter. `python notebooks/analysis.py` still runs it as a plain
# script (tables printed as Markdown text, plots only to files).

# %%
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: headless
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from xmr.data.store import DIRECTION_TITLES, TABLE_ORDER, FeatureStore
from xmr.report.cli import build_report
from xmr.report.collect import run_predictions
from xmr.report.render import full_gallery_markdown, significance_markdown, to_markdown
from xmr.report.significance import align_predictions
from xmr.report.table import BASELINE

IN_KERNEL = "ipykernel" in sys.modules
if "XMR_RUNS_ROOT" not in os.environ and "XMR_REPORT_DIR" in os.environ:
    print("XMR_REPORT_DIR is read as XMR_RUNS_ROOT (its new name: the runs root, not --out)")
RUNS_ROOT = Path(os.environ.get("XMR_RUNS_ROOT") or os.environ.get("XMR_REPORT_DIR", "logs/demo"))
OUT_DIR = Path(os.environ.get("XMR_NOTEBOOK_OUT") or RUNS_ROOT)
RESAMPLES = int(os.environ.get("XMR_RESAMPLES", "10000"))


def show(markdown: str) -> None:
    """Markdown (tables, lists) rendered in a notebook; printed as text by a plain script."""
    if not markdown.strip():
        return
    if IN_KERNEL:
        from IPython.display import Markdown, display

        display(Markdown(markdown))
    else:
        print(markdown)


def cell(text: object) -> str:
    """``text`` as one cell of a Markdown table (its pipes, markup and line breaks escaped)."""
    escaped = "".join("\\" + ch if ch in "\\`*_[]<>|#" else ch for ch in str(text))
    return " ".join(escaped.split())


def markdown_table(head: list[str], body: list[list[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in body])


report = build_report(RUNS_ROOT, recall="hit", n_resamples=RESAMPLES)
show(
    f"Runs root `{RUNS_ROOT}`: {len(report.runs)} finished runs, "
    f"{len(report.unfinished)} failed/missing."
    + (
        "\n\n**SYNTHETIC data**: these runs used a generated store, not real images and captions."
        if report.synthetic
        else ""
    )
)

# %% [markdown]
# ## Full-gallery protocol, Table 2 and significance

# %%
show(full_gallery_markdown(report.rows, report.ks, report.full_construction))
show(to_markdown(report.rows, report.ks, report.recall, report.list_construction))
show("\n".join(report.probe_lines + report.probe_warnings))
show(
    significance_markdown(
        report.significance, n_resamples=report.n_resamples, seed=report.seed, test=report.test
    )
)
show("\n\n".join(report.gain_warnings))
show("\n".join(f"- {job['status']}: `{job['_dir']}`" for job in report.unfinished))

# %% [markdown]
# ## Recall@K curves

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, direction in zip(axes, TABLE_ORDER, strict=True):
    for name, per_dir in report.curves.items():
        if direction in per_dir:
            curve = per_dir[direction]
            style = "--" if name.startswith(BASELINE) else "-"
            ax.plot(np.arange(1, len(curve) + 1), 100 * curve, style, label=name)
    ax.set_title(DIRECTION_TITLES[direction])
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("Recall@K (%, hit@K)")
axes[0].legend(fontsize=8)
fig.suptitle(("SYNTHETIC — " if report.synthetic else "") + "Recall@K inside the test lists")
OUT_DIR.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT_DIR / "notebook_recall_at_k.png", dpi=90, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Per-query error analysis
#
# For each direction: the ranker row with the best mean R@1, its lowest-seed run, against the
# CLIP-cosine run, on the same test queries (rows of the predictions files).

# %%
baseline_runs = [
    r for row in report.rows.values() if row["method"] == BASELINE for r in row["runs"]
]
stores: dict[str, FeatureStore] = {}


def describe(store: FeatureStore | None, item: int, kind: str) -> str:
    """Caption text of a text id; name and first caption of an image id."""
    if store is None:
        return f"{kind} #{item}"
    if kind == "text":
        return store.captions()[item]
    first = int(np.flatnonzero(np.asarray(store.text_image) == item)[0])
    return f"[{store.images()[item]}] {store.captions()[first]}"


summary: list[list[object]] = []  # one row per direction
examples: list[list[object]] = []  # a few fixed and broken queries per direction
for direction in TABLE_ORDER:
    rankers = [
        (row.get(f"{direction}/R@1", (-1.0, 0.0))[0], name, row)
        for name, row in report.rows.items()
        if row["method"] != BASELINE and row["runs"]
    ]
    if not rankers or not baseline_runs:
        show(f"{direction}: needs a ranker and a CLIP-cosine run.")
        continue
    _, name, row = max(rankers, key=lambda t: t[0])
    run = min(row["runs"], key=lambda r: str(r.get("seed")))
    pred, base = run_predictions(run, direction), run_predictions(baseline_runs[0], direction)
    if pred is None or base is None or (pair := align_predictions(pred, base)) is None:
        show(f"{direction}: no comparable predictions.")
        continue
    a, b = pair
    ranker_ok = pred["labels"][a, 0] > 0  # (Q,) top-1 is relevant
    cosine_ok = base["labels"][b, 0] > 0  # (Q,)
    fixes = np.flatnonzero(ranker_ok & ~cosine_ok)
    breaks = np.flatnonzero(~ranker_ok & cosine_ok)
    summary.append(
        [
            direction,
            name,
            run.get("seed"),
            len(a),
            int((ranker_ok & cosine_ok).sum()),
            len(fixes),
            len(breaks),
            int((~ranker_ok & ~cosine_ok).sum()),
        ]
    )
    store_path = (run.get("store") or {}).get("path")
    if store_path and store_path not in stores:
        try:
            stores[store_path] = FeatureStore.open(store_path, check_norms=False)
        except Exception as err:  # the analysis still runs on ids
            show(f"Store `{store_path}` not readable here: {err}")
    store = stores.get(store_path)
    q_kind, c_kind = ("text", "image") if direction == "t2i" else ("image", "text")
    for label, idx in (("fixes", fixes), ("breaks", breaks)):
        for i in idx[:3]:
            examples.append(
                [
                    direction,
                    label,
                    describe(store, int(pred["query"][a[i]]), q_kind),
                    describe(store, int(pred["candidates"][a[i], 0]), c_kind),
                    describe(store, int(base["candidates"][b[i], 0]), c_kind),
                ]
            )

# %% [markdown]
# Top-1 of the test queries, the ranker (best row by mean R@1, lowest seed) against CLIP cosine:
# "fixes" = cosine wrong and ranker right, "breaks" = cosine right and ranker wrong.

# %%
SUMMARY_HEAD = [
    "direction",
    "ranker",
    "seed",
    "queries",
    "both right",
    "ranker fixes",
    "ranker breaks",
    "both wrong",
]
show(markdown_table(SUMMARY_HEAD, summary) if summary else "No direction to compare.")

# %%
EXAMPLES_HEAD = ["direction", "case", "query", "ranker top-1", "cosine top-1"]
show(markdown_table(EXAMPLES_HEAD, examples) if examples else "No query fixed or broken.")

# %% [markdown]
# ## Validation curves

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for i, (name, runs) in enumerate(report.histories.items()):
    color = f"C{i % 10}"  # one colour per method, all its seeds; the legend counts them
    label = f"{name} ({len(runs)} seed{'s' if len(runs) != 1 else ''})"
    for k, records in enumerate(runs):
        points = sorted((r["epoch"], r["val/rsum"]) for r in records if "val/rsum" in r)
        if points:
            ax.plot(
                *zip(*points, strict=True),
                "o-",
                color=color,
                alpha=0.6,
                label=label if k == 0 else None,
            )
ax.set_xlabel("epoch")
ax.set_ylabel("val/rsum")
ax.legend(fontsize=8)
fig.savefig(OUT_DIR / "notebook_validation.png", dpi=90, bbox_inches="tight")
plt.show()
